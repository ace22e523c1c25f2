"""A fog node as the rest of the orchestrator sees it: a name, a libvirt URI, a few facts.

Whether it is a namespace of the lab-in-a-box or a real host from an inventory makes no
difference above this point.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlparse

from orchestrator.errors import UserError

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
URI_SCHEMES = ("qemu", "qemu+tcp", "qemu+tls", "qemu+ssh", "test")


def validate_name(kind: str, name: str) -> str:
    """VM and node names: [a-z0-9-], at most 63 characters, not starting with '-'."""
    if not NAME_PATTERN.match(name):
        raise UserError(f"invalid {kind} name {name!r}: use [a-z0-9-], at most 63 characters")
    return name


@dataclass(frozen=True)
class FogNode:
    name: str
    uri: str  # libvirt URI, e.g. qemu+tcp://10.77.0.11/system
    address: str  # where the node is reached (and where its migration stream listens)
    vm_bridge: str = "br-vm"  # bridge that VM NICs join on this node
    image_dir: str = ""  # where the guest kernel and initramfs are on this node
    domain_type: str | None = None  # "kvm" or "qemu" once probed; None: probe on first use
    facts: dict[str, Any] = field(default_factory=dict)  # capacity, energy source, ...

    def __post_init__(self) -> None:
        validate_name("node", self.name)
        scheme = urlparse(self.uri).scheme
        if scheme not in URI_SCHEMES:
            raise UserError(f"node {self.name}: unsupported libvirt URI scheme {scheme!r}")

    @property
    def host(self) -> str:
        """The host part of the URI, which is what a libvirt connection dials."""
        return urlparse(self.uri).hostname or ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FogNode:
        return cls(**data)
