"""Kernel network objects of the lab: core bridge, namespaces, veths, VM bridges, shaping.

Thin adapter over iproute2 and tc through a `Runner`; the only logic here is the order
(gateway on the core bridge first, so no lab address is ever routed out of the machine) and
tolerance of objects that are already gone (teardown is idempotent).
"""

from __future__ import annotations

import ipaddress
import json
import tempfile
from collections.abc import Iterable

from orchestrator.errors import UserError
from orchestrator.lab import firewall
from orchestrator.lab.topology import DEVICE_LINK, VM_BRIDGE, NodePlan, Topology, lab_mac
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
    return lab_mac(address)


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


def apply_ruleset(runner: Runner, script: str) -> None:
    """`nft -f` one script: all of it or nothing (nft applies a file as one transaction).

    NOTE: through a file, not stdin: a `Runner` gives commands no input."""
    with tempfile.NamedTemporaryFile("w", prefix="edgeiot-nft-", suffix=".nft") as file:
        file.write(script)
        file.flush()
        runner.run(["nft", "-f", file.name])


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

    def create_devices(self, node: NodePlan) -> None:
        """The node's devices namespace: one veth onto the node's VM bridge, with the fixed
        MAC and address the node's anti-spoofing table pins it to.

        NOTE: checksum offload is off on both ends: on the SDN core the userspace OVS
        datapath does not complete partial checksums (see orchestrator.lab.sdn), and a
        device's connection to a proxy on another node crosses it.
        """
        dev = node.devices
        if dev is None:
            return
        r, ns = self.runner, NamespaceRunner(node.namespace, self.runner)
        dns = NamespaceRunner(dev.namespace, self.runner)
        r.run(["ip", "netns", "add", dev.namespace])
        # NOTE: no IPv6 here: the lab is IPv4, and the link-local chatter of a new interface
        # (DAD, MLD, router solicitations) would count as spoofed L2 traffic in the node.
        dns.run(["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                 "net.ipv6.conf.default.disable_ipv6=1"])
        dns.run(["ip", "link", "set", "lo", "up"])
        ns.run(["ip", "link", "add", dev.node_veth, "type", "veth",
                "peer", "name", DEVICE_LINK, "netns", dev.namespace])
        ns.run(["ethtool", "-K", dev.node_veth, "tx", "off"], check=False)
        dns.run(["ethtool", "-K", DEVICE_LINK, "tx", "off"], check=False)
        ns.run(["ip", "link", "set", dev.node_veth, "master", VM_BRIDGE, "up"])
        dns.run(["ip", "link", "set", DEVICE_LINK, "address", dev.mac])
        dns.run(["ip", "addr", "add", f"{dev.address}/{self.topology.prefix_len}",
                 "dev", DEVICE_LINK])
        dns.run(["ip", "link", "set", DEVICE_LINK, "up"])

    def guard_node(self, node: NodePlan) -> None:
        """Install the node's trust boundary (see orchestrator.lab.firewall) before any of
        its daemons listens."""
        apply_ruleset(NamespaceRunner(node.namespace, self.runner),
                      firewall.node_ruleset(self.topology, node))

    def guard_root(self) -> None:
        """The gateway's table in the root namespace, scoped to the lab's core bridge."""
        apply_ruleset(self.runner, firewall.root_guard(self.topology))

    def unguard_root(self) -> None:
        """Delete exactly the lab's own root table; nothing else of the host's rules."""
        self.runner.run(firewall.delete_root_guard_argv(self.topology.spec.prefix),
                        check=False)

    def guard_counters(self, namespace: str | None = None) -> dict[str, int]:
        """The guard's named counters in a node's namespace (None: the root namespace)."""
        runner = NamespaceRunner(namespace, self.runner) if namespace else self.runner
        name = firewall.table_name(self.topology.spec.prefix)
        counters: dict[str, int] = {}
        for family in ("inet", "bridge"):
            out = runner.run(["nft", "-j", "list", "counters", "table", family, name],
                             check=False).stdout
            for key, packets in firewall.parse_counters(out).items():
                counters[key] = counters.get(key, 0) + packets
        return counters

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
