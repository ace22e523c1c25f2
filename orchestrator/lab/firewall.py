"""The lab's trust boundary as nftables rulesets: pure text from the topology.

Who may reach what on the lab segment:
  * infrastructure: the orchestrator (the gateway address, root namespace) and every fog
    node's own address. Only they may open connections to a node: libvirtd (TCP/TLS),
    QEMU's migration and NBD ports, sshd, the host agent. Peer-to-peer migration needs
    node → node; `lab`, `deploy` and Prometheus need gateway → node.
  * everything else: VMs (addresses from the VM network, on a node's `br-vm` through a tap)
    and devices (each fog node's devices namespace, on `br-vm` through its own veth). They
    may talk to each other (that is the data plane, guarded by its own authentication) but
    not open any connection to a node or to the gateway. Such attempts are refused (TCP
    reset on a management port, so an attacker learns nothing slowly) or dropped, and
    counted in named nft counters that `Lab.guard_counters` reads.

Identity on the segment must hold for the rules above to mean anything: VM NICs carry
libvirt's `clean-traffic` nwfilter (see `orchestrator.fog.domain_xml`), and each devices
namespace's veth is pinned to its own MAC and address by a bridge-family table in its node
(`device_antispoof`), so neither can pose as a node or the gateway.

Every table is called `<prefix>-guard`: inside a node's namespace it dies with the namespace;
in the root namespace it is the only thing the lab adds, every rule there is scoped to the
lab's core bridge, and teardown deletes exactly that table (`delete_root_guard_argv`).
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.lab.topology import NodePlan, Topology

# TCP ports of a fog node that only infrastructure may reach.
MANAGEMENT_PORTS: dict[str, str] = {
    "sshd": "22",
    "host-agent": "9100",
    "exporter": "9177",
    "libvirtd-tcp": "16509",
    "libvirtd-tls": "16514",
    # NOTE: libvirt hands QEMU's incoming migration stream and the NBD server of a storage
    # migration ports from one range, migration_port_min..max (49152-49215 by default).
    "qemu-migration": "49152-49215",
}
REFUSED = "refused"  # counter: connection attempts to a management port, answered by RST
DROPPED = "dropped"  # counter: any other new traffic from a non-infrastructure address
SPOOFED = "spoofed"  # counter: frames from a devices veth with a foreign MAC/IP or L2 type


def table_name(prefix: str) -> str:
    return f"{prefix}-guard"


def infrastructure(topology: Topology) -> list[str]:
    """Addresses allowed to open connections to a node: the gateway and every node."""
    return [topology.gateway, *(n.address for n in topology.nodes)]


def _ports() -> str:
    return ", ".join(MANAGEMENT_PORTS.values())


def _input_chain(topology: Topology, scope: str) -> list[str]:
    """Input rules shared by nodes and the root namespace; `scope` names the traffic the
    chain judges at all (the root namespace only judges what arrives on the lab's bridge)."""
    peers = ", ".join(infrastructure(topology))
    return [
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        *([f"    {scope}"] if scope else []),
        "    ct state established,related accept",
        f"    ip saddr {{ {peers} }} accept",
        "    meta l4proto { icmp, ipv6-icmp } accept",
        f"    tcp dport {{ {_ports()} }} counter name {REFUSED} reject with tcp reset",
        f"    counter name {DROPPED} drop",
        "  }",
    ]


def node_guard(topology: Topology) -> str:
    """The inet table of a node's namespace: only infrastructure opens connections to it.

    NOTE: loopback is the node itself (libvirtd talking to itself, `nsenter` tools); devices
    no longer share the node's namespace, so nothing else arrives there on `lo`.
    """
    return _guard_table(topology, 'iif "lo" accept')


def root_guard(topology: Topology) -> str:
    """The inet table of the root namespace: the gateway (the orchestrator's own address,
    where `locate --serve` or the controller may listen) is closed to VMs and devices.
    Every rule first lets through whatever did not arrive on the lab's core bridge: the
    host's own traffic is never judged here."""
    return _guard_table(topology, f'iifname != "{topology.bridge}" accept')


def _guard_table(topology: Topology, first_rule: str) -> str:
    """The lab's guard table with its two counters; the two guards differ only in the
    rule that lets through what is not theirs to judge."""
    name = table_name(topology.spec.prefix)
    return "\n".join([
        f"table inet {name} {{",
        f"  counter {REFUSED} {{ }}",
        f"  counter {DROPPED} {{ }}",
        *_input_chain(topology, first_rule),
        "}",
        "",
    ])


def device_antispoof(topology: Topology, node: NodePlan) -> str:
    """A bridge table in the node's namespace pinning its devices veth to one identity.

    Frames entering `br-vm` from the devices namespace must carry that namespace's MAC, and
    IPv4 or ARP with its address; anything else (another MAC, a forged source address, an
    ARP claim to someone else's address, other L2 protocols) is dropped and counted. The
    same rules as libvirt's clean-traffic gives a VM's tap.
    """
    if node.devices is None:
        return ""
    dev = node.devices
    port = f'iifname "{dev.node_veth}"'
    return "\n".join([
        f"table bridge {table_name(topology.spec.prefix)} {{",
        f"  counter {SPOOFED} {{ }}",
        "  chain prerouting {",
        "    type filter hook prerouting priority filter; policy accept;",
        f"    {port} ether saddr != {dev.mac} counter name {SPOOFED} drop",
        f"    {port} ether type != {{ ip, arp }} counter name {SPOOFED} drop",
        f"    {port} ether type ip ip saddr != {dev.address} counter name {SPOOFED} drop",
        f"    {port} ether type arp arp saddr ether != {dev.mac} counter name {SPOOFED} drop",
        f"    {port} ether type arp arp saddr ip != {dev.address} counter name {SPOOFED} drop",
        "  }",
        "}",
        "",
    ])


def node_ruleset(topology: Topology, node: NodePlan) -> str:
    """Everything a node's namespace gets, as one `nft -f` script (applied atomically)."""
    return node_guard(topology) + device_antispoof(topology, node)


def delete_root_guard_argv(prefix: str) -> list[str]:
    return ["nft", "delete", "table", "inet", table_name(prefix)]


def parse_counters(nft_json: str) -> dict[str, int]:
    """Packets per named counter from `nft -j list counters ...` output."""
    found: dict[str, int] = {}
    for item in json.loads(nft_json or "{}").get("nftables", []):
        counter: dict[str, Any] | None = item.get("counter")
        if counter is not None:
            key = counter["name"]
            found[key] = found.get(key, 0) + int(counter.get("packets", 0))
    return found
