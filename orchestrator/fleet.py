"""The set of fog nodes a command works on: the running lab-in-a-box, or an inventory.

Commands ask for a `Fleet` and never learn which of the two it came from.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.fog.inventory import load_inventory
from orchestrator.fog.node import FogNode
from orchestrator.lab import state
from orchestrator.lab.builder import Lab
from orchestrator.netguard import LabNetwork as GuardedSubnet
from orchestrator.netguard import NetworkPolicy

DEFAULT_LAB = "eiot"


def default_lab_prefix() -> str:
    """The lab commands work on: $EDGEIOT_LAB, else "eiot"."""
    return os.environ.get("EDGEIOT_LAB", DEFAULT_LAB)


@dataclass(frozen=True)
class Fleet:
    nodes: dict[str, FogNode]
    policy: NetworkPolicy
    vm_network: ipaddress.IPv4Network | None  # where VM addresses come from, if we assign them
    prefix_len: int | None
    gateway: str | None

    def node(self, name: str) -> FogNode:
        try:
            return self.nodes[name]
        except KeyError:
            known = ", ".join(sorted(self.nodes))
            raise UserError(f"unknown fog node {name!r} (known: {known})") from None


def lab_fleet(state_dir: Path, prefix: str | None = None) -> Fleet:
    lab = Lab.recorded(state_dir, prefix or default_lab_prefix())
    nodes = lab.fog_nodes()
    # NOTE: lab guests get no default gateway: they reach the lab subnet and nothing else.
    return Fleet(nodes={n.name: n for n in nodes}, policy=lab.policy,
                 vm_network=lab.topology.vm_network, prefix_len=lab.topology.prefix_len,
                 gateway=None)


def known_lab_networks(state_dir: Path) -> tuple[GuardedSubnet, ...]:
    """Subnets of every lab recorded under the state dir: their routes are checked even when
    an inventory names their addresses."""
    found = []
    for path in sorted((state_dir / "labs").glob("*/lab.json")):
        record = state.load(state.LabPaths(state_dir, path.parent.name)) or {}
        if "spec" in record and "bridge" in record:
            found.append(GuardedSubnet(ipaddress.IPv4Network(record["spec"]["subnet"]),
                                       record["bridge"]))
    return tuple(found)


def inventory_fleet(path: str, state_dir: Path) -> Fleet:
    nodes, all_vars = load_inventory(path)
    hosts = frozenset(n.host for n in nodes) | frozenset(n.address for n in nodes)
    vm_net = all_vars.get("vm_network")
    try:
        network = ipaddress.IPv4Network(vm_net) if vm_net else None
    except ValueError as exc:
        raise UserError(f"{path}: invalid vm_network {vm_net!r}: {exc}") from exc
    policy = NetworkPolicy(labs=known_lab_networks(state_dir), remote_hosts=hosts)
    return Fleet(nodes={n.name: n for n in nodes}, policy=policy, vm_network=network,
                 prefix_len=network.prefixlen if network else None,
                 gateway=all_vars.get("gateway"))


def resolve_fleet(state_dir: Path, inventory: str | None) -> Fleet:
    return inventory_fleet(inventory, state_dir) if inventory else lab_fleet(state_dir)
