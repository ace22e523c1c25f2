"""Kernel network objects of the lab: core bridge, namespaces, veths, VM bridges, shaping.

Thin adapter over iproute2 and tc through a `Runner`; the only logic here is the order
(gateway on the core bridge first, so no lab address is ever routed out of the machine) and
tolerance of objects that are already gone (teardown is idempotent).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable

from orchestrator.errors import UserError
from orchestrator.lab.topology import VM_BRIDGE, NodePlan, Topology
from orchestrator.runner import LocalRunner, NamespaceRunner, Runner


def parse_link_names(ip_json: str) -> list[str]:
    """Interface names from `ip -j link show` output."""
    return [str(link["ifname"]) for link in json.loads(ip_json or "[]")]


def parse_netns_names(ip_json: str) -> list[str]:
    """Namespace names from `ip -j netns list` output (empty output when there are none)."""
    return [str(ns["name"]) for ns in json.loads(ip_json or "[]")]


def overlapping_routes(ip_json: str, subnet: ipaddress.IPv4Network) -> list[str]:
    """Routes in `ip -j route show` output that overlap `subnet` (the default route aside):
    a lab must own its subnet alone, or its traffic could take another device."""
    found = []
    for route in json.loads(ip_json or "[]"):
        dst = route.get("dst", "")
        if dst in ("", "default"):
            continue
        try:
            net = ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False)
        except ValueError:
            continue
        if net.overlaps(subnet):
            found.append(f"{dst} dev {route.get('dev', '?')}")
    return found


def bridge_mac(address: str) -> str:
    """A fixed, locally administered MAC for a lab bridge, derived from its IPv4 address.

    NOTE: a Linux bridge without an explicit MAC takes the lowest MAC among its ports and
    changes it when a port comes or goes. libvirt gives each tap the guest's MAC with the
    first byte FE, so the same VM's taps on the source and the destination node share one
    MAC; when the destination's bridge took it at a migration's start, the source node's
    replies to that MAC stayed inside the source (a local address of its own bridge) and the
    two nodes could not reach each other until libvirt's keepalive gave up.
    """
    packed = ipaddress.IPv4Address(address).packed
    return "02:1e:" + ":".join(f"{b:02x}" for b in packed)


def shaping_args(rate_mbit: float | None, delay_ms: float | None) -> list[str]:
    """tc qdisc shaping one direction of a core link; [] when nothing is asked.

    A rate alone uses tbf (always built in); a delay needs netem, which carries the rate too.
    tbf's bucket holds 4 ms of traffic (at least 32 KiB) so the rate holds at any HZ.
    """
    if delay_ms:
        rate = ["rate", f"{rate_mbit:g}mbit"] if rate_mbit else []
        return ["netem", "delay", f"{delay_ms:g}ms", *rate, "limit", "100000"]
    if rate_mbit:
        burst = max(32 * 1024, int(rate_mbit * 1e6 / 8 * 0.004))
        return ["tbf", "rate", f"{rate_mbit:g}mbit", "burst", str(burst), "latency", "100ms"]
    return []


class LabNetwork:
    def __init__(self, topology: Topology, runner: Runner | None = None) -> None:
        self.topology = topology
        self.runner = runner or LocalRunner()

    def create_core(self) -> None:
        """Core bridge with the gateway address: the lab subnet's route, before anything else."""
        t = self.topology
        self.runner.run(["ip", "link", "add", t.bridge, "address", bridge_mac(t.gateway),
                         "type", "bridge"])
        self.runner.run(["ip", "addr", "add", f"{t.gateway}/{t.prefix_len}", "dev", t.bridge])
        self.runner.run(["ip", "link", "set", t.bridge, "up"])

    def create_node(self, node: NodePlan) -> None:
        """Namespace, veth to the core, and the node's VM bridge carrying its address."""
        r, ns = self.runner, NamespaceRunner(node.namespace, self.runner)
        r.run(["ip", "netns", "add", node.namespace])
        ns.run(["ip", "link", "set", "lo", "up"])
        r.run(["ip", "link", "add", node.core_veth, "type", "veth",
               "peer", "name", node.node_veth, "netns", node.namespace])
        r.run(["ip", "link", "set", node.core_veth, "master", self.topology.bridge, "up"])
        ns.run(["ip", "link", "add", VM_BRIDGE, "address", bridge_mac(node.address),
                "type", "bridge"])
        ns.run(["ip", "link", "set", node.node_veth, "master", VM_BRIDGE, "up"])
        ns.run(["ip", "addr", "add", f"{node.address}/{self.topology.prefix_len}",
                "dev", VM_BRIDGE])
        ns.run(["ip", "link", "set", VM_BRIDGE, "up"])

    def shape(self, node: NodePlan, rate_mbit: float | None, delay_ms: float | None) -> None:
        """Shape both directions of the node's core link (each veth end's egress)."""
        args = shaping_args(rate_mbit, delay_ms)
        if not args:
            return
        result = self.runner.run(["tc", "qdisc", "replace", "dev", node.core_veth, "root", *args],
                                 check=False)
        if not result.ok and "unknown" in result.stderr and args[0] == "netem":
            raise UserError("--core-delay-ms needs the kernel's netem qdisc, which this kernel "
                            "lacks; shape the rate alone with --core-mbit")
        result.check()
        NamespaceRunner(node.namespace, self.runner).run(
            ["tc", "qdisc", "replace", "dev", node.node_veth, "root", *args])

    # --- discovery and teardown -------------------------------------------------------

    def subnet_routes(self) -> list[str]:
        out = self.runner.run(["ip", "-j", "route", "show"], check=False).stdout
        return overlapping_routes(out, self.topology.spec.network)

    def lab_namespaces(self) -> list[str]:
        out = self.runner.run(["ip", "-j", "netns", "list"], check=False).stdout
        prefix = f"{self.topology.spec.prefix}-"
        return [n for n in parse_netns_names(out) if n.startswith(prefix)]

    def lab_links(self) -> list[str]:
        out = self.runner.run(["ip", "-j", "link", "show"], check=False).stdout
        prefix = f"{self.topology.spec.prefix}-"
        return [n.split("@")[0] for n in parse_link_names(out) if n.startswith(prefix)]

    def namespace_pids(self, namespace: str) -> list[int]:
        out = self.runner.run(["ip", "netns", "pids", namespace], check=False).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    def delete_namespaces(self, names: Iterable[str]) -> None:
        for name in names:
            self.runner.run(["ip", "netns", "delete", name], check=False)

    def delete_links(self, names: Iterable[str]) -> None:
        """Veths first (deleting one end removes its peer), the core bridge last."""
        bridge = self.topology.bridge
        for name in sorted(names, key=lambda n: n == bridge):
            self.runner.run(["ip", "link", "delete", name], check=False)

    def core_link_bytes(self) -> dict[str, dict[str, int]]:
        """Bytes each node sent into / received from the core, read off the root-side veths."""
        counters: dict[str, dict[str, int]] = {}
        for node in self.topology.nodes:
            out = self.runner.run(["ip", "-j", "-s", "link", "show", node.core_veth],
                                  check=False).stdout
            links = json.loads(out or "[]")
            if links:
                stats = links[0]["stats64"]
                # The root-side end receives what the node sends into the core.
                counters[node.name] = {"to_core": int(stats["rx"]["bytes"]),
                                       "from_core": int(stats["tx"]["bytes"])}
        return counters
