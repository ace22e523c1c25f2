"""Which data-plane services this VM runs, from its role on the kernel command line.

Why: one guest image boots as a proxy VM (device streams, models, metadata out) or as an
application VM (metadata in, user queries). The orchestrator puts `edgeiot.role=proxy|app`
on the kernel command line; without it (e.g. a developer running the agent on a laptop)
the VM is a proxy, the paper's default.
"""

from __future__ import annotations

from . import wire
from .appvm import AppVmService
from .streams import StreamService

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CMDLINE_PATH = "/proc/cmdline"
ROLES = ("proxy", "app")


def parse_role(cmdline: str) -> str:
    """The last `edgeiot.role=` value on a kernel command line, "proxy" if absent/unknown."""
    role = "proxy"
    for word in cmdline.split():
        if word.startswith("edgeiot.role="):
            role = word.split("=", 1)[1]
    return role if role in ROLES else "proxy"


def read_role(path: str = CMDLINE_PATH) -> str:
    try:
        with open(path) as f:
            return parse_role(f.read())
    except OSError:
        return "proxy"


def services_for(role: str, name: str, key: str | None = None, host: str = "0.0.0.0",
                 port: int | None = None) -> list[Any]:
    """The data-plane services of a role; an application VM checks its proxies with `key`.
    `port` None: the role's port from wire.py (0: any free port, for tests and benches)."""
    if role == "app":
        return [AppVmService(host, wire.METADATA_PORT if port is None else port, key=key)]
    return [StreamService(name, host, wire.STREAM_PORT if port is None else port)]
