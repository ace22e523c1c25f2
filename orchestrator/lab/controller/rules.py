"""The SDN core's flow rules and counters as plain data: pure, no os-ken, no sockets.

Pipeline (OpenFlow 1.3, two tables):
    table 0  classify: one rule per (class, protocol, port range, direction), cookie = class,
             the migration class through the migration meter; the table-miss rule is the
             class "other". Every rule continues to table 1, so flow stats of table 0 are the
             per-class core counters (each frame is counted exactly once).
    table 1  forward: proactive rules for every fog node's and the gateway's MAC, migration
             moves (a VM's MAC pinned to its new node's port at switch-over) above them, and
             OVS's NORMAL (MAC learning, flooding) as the fallback, so VMs the controller was
             never told about behave as on the Linux-bridge core.

Why classify by L4 port both ways: a TCP stream's ACKs travel the other way with the port as
the source; they belong to the same class (a migration's ACKs are migration traffic).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import UserError

COOKIE_BASE = 0xED10_0000_0000_0000  # marks our rules; low bits: class index
CLASSIFY_TABLE = 0
FORWARD_TABLE = 1
MIGRATION_METER_ID = 1
PRIO_CLASS = 100
PRIO_NODE = 200
PRIO_MOVE = 300
MOVE_HOLD_S = 30  # a flow move's pin lasts this long, traffic or not (see move_flow)
MAC_PATTERN = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class PortRange:
    proto: str  # "tcp" | "udp"
    low: int
    high: int


# Which core traffic belongs to which class (the paper's core-traffic metric, per class).
CLASSES: dict[str, tuple[PortRange, ...]] = {
    # raw device streams into proxy VMs (issue 3's device stream port)
    "raw": (PortRange("tcp", 7071, 7071), PortRange("udp", 7071, 7071)),
    # metadata from proxy VMs to application VMs
    "metadata": (PortRange("tcp", 7072, 7072),),
    # libvirt/QEMU live migration streams (qemu.conf migration_port_min..max)
    "migration": (PortRange("tcp", 49152, 49215),),
    # libvirt remote (tcp, tls), SSH, host-agent metrics, guest agent control
    "control": (PortRange("tcp", 16509, 16509), PortRange("tcp", 16514, 16514),
                PortRange("tcp", 22, 22), PortRange("tcp", 9100, 9100),
                PortRange("tcp", 7070, 7070)),
}
CLASS_NAMES: tuple[str, ...] = (*CLASSES, "other")
IP_PROTO = {"tcp": 6, "udp": 17}


@dataclass(frozen=True)
class Flow:
    """One flow entry, independent of the OpenFlow library that installs it."""

    table: int
    priority: int
    match: Mapping[str, Any]
    goto: int | None = None  # goto_table
    output: int | str | None = None  # port number, or "NORMAL" / "LOCAL"
    meter: int | None = None
    cookie: int = COOKIE_BASE
    idle_timeout: int = 0
    hard_timeout: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def class_cookie(name: str) -> int:
    return COOKIE_BASE | CLASS_NAMES.index(name)


def cookie_class(cookie: int) -> str | None:
    """The class a flow's cookie names, None for rules that are not ours."""
    if cookie & ~0xFFFF != COOKIE_BASE:
        return None
    index = cookie & 0xFFFF
    return CLASS_NAMES[index] if index < len(CLASS_NAMES) else None


def port_masks(low: int, high: int) -> list[tuple[int, int]]:
    """Cover [low, high] with (value, mask) pairs, as OpenFlow matches L4 ports.

    49152..49215 is one pair (0xc000/0xffc0); an arbitrary range needs a few."""
    if not 0 <= low <= high <= 0xFFFF:
        raise UserError(f"invalid port range {low}..{high}")
    out: list[tuple[int, int]] = []
    while low <= high:
        size = low & -low if low else 0x10000
        while size > high - low + 1:
            size //= 2
        out.append((low, 0xFFFF & ~(size - 1)))
        low += size
    return out


def _port_matches(rng: PortRange) -> Iterable[dict[str, Any]]:
    for value, mask in port_masks(rng.low, rng.high):
        port = value if mask == 0xFFFF else (value, mask)
        base = {"eth_type": 0x0800, "ip_proto": IP_PROTO[rng.proto]}
        yield {**base, f"{rng.proto}_dst": port}
        yield {**base, f"{rng.proto}_src": port}


def classification_flows(metered: bool) -> list[Flow]:
    """Table 0: one counting rule per class match, the miss rule counting "other"."""
    flows = []
    for name, ranges in CLASSES.items():
        meter = MIGRATION_METER_ID if metered and name == "migration" else None
        for rng in ranges:
            flows += [Flow(CLASSIFY_TABLE, PRIO_CLASS, m, goto=FORWARD_TABLE, meter=meter,
                           cookie=class_cookie(name)) for m in _port_matches(rng)]
    flows.append(Flow(CLASSIFY_TABLE, 0, {}, goto=FORWARD_TABLE, cookie=class_cookie("other")))
    return flows


def check_mac(mac: str) -> str:
    mac = str(mac).lower()
    if not MAC_PATTERN.match(mac):
        raise UserError(f"invalid MAC address {mac!r}")
    return mac


def forwarding_flows(node_ports: Mapping[str, int], gateway_mac: str | None) -> list[Flow]:
    """Table 1: each fog node's MAC to its port, the gateway's to LOCAL, the rest NORMAL."""
    flows = [Flow(FORWARD_TABLE, 0, {}, output="NORMAL")]
    flows += [Flow(FORWARD_TABLE, PRIO_NODE, {"eth_dst": check_mac(mac)}, output=port)
              for mac, port in sorted(node_ports.items())]
    if gateway_mac:
        flows.append(Flow(FORWARD_TABLE, PRIO_NODE, {"eth_dst": check_mac(gateway_mac)},
                          output="LOCAL"))
    return flows


def move_flow(mac: str, port: int, hold_s: int = MOVE_HOLD_S) -> Flow:
    """A migrated VM's MAC pinned to its new node's port (replaces an earlier move).

    The pin bridges the switch-over only: it ends `hold_s` after the move (a hard timeout),
    handing the MAC back to MAC learning, which the controller's RARP and QEMU's own announce
    have taught the same port by then. NOTE: not an idle timeout: traffic towards the MAC
    refreshes that, so after a later migration without a move (`--no-flow-move`, the replay's
    migrations) clients retrying to reach the VM kept a stale pin alive and the VM cut off."""
    if port <= 0:
        raise UserError(f"invalid switch port {port}")
    if hold_s <= 0:
        raise UserError(f"a flow move's hold must be > 0 s, got {hold_s}")
    return Flow(FORWARD_TABLE, PRIO_MOVE, {"eth_dst": check_mac(mac)}, output=port,
                hard_timeout=int(hold_s))


def meter_band(rate_mbit: float) -> tuple[int, int]:
    """(rate kbit/s, burst kbit) of the migration meter: 200 ms of traffic, at least 1 Mbit.

    NOTE: the meter is a policer. QEMU paces a capped migration in 100 ms slices sent at
    line rate, so a burst under one slice drops packets of a stream that keeps to the rate
    on average; TCP through such drops reaches ~35 % of the rate (seen: 80 Mbit/s meter,
    uncapped migration, 3.5 MB/s). Cap the migration at the meter's rate (r_mig) and keep
    the burst above a slice, and the meter only ever guards."""
    if rate_mbit <= 0:
        raise UserError(f"migration rate must be > 0 Mbit/s, got {rate_mbit}")
    kbps = max(1, int(rate_mbit * 1000))
    return kbps, max(1000, kbps // 5)


def class_totals(entries: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Per-class bytes and packets from table-0 flow stats ({cookie, byte_count,
    packet_count, table_id}); rules that are not ours are ignored."""
    totals = {name: {"bytes": 0, "packets": 0} for name in CLASS_NAMES}
    for e in entries:
        if int(e.get("table_id", CLASSIFY_TABLE)) != CLASSIFY_TABLE:
            continue
        name = cookie_class(int(e["cookie"]))
        if name is None:
            continue
        totals[name]["bytes"] += int(e["byte_count"])
        totals[name]["packets"] += int(e["packet_count"])
    return totals


def link_totals(entries: Iterable[Mapping[str, Any]],
                port_names: Mapping[int, str]) -> dict[str, dict[str, int]]:
    """Per-fog-node link counters from port stats; "to_core" is what the node sent into the
    switch (the port's rx), as in the Linux-bridge core's veth counters."""
    out: dict[str, dict[str, int]] = {}
    for e in entries:
        name = port_names.get(int(e["port_no"]))
        if name is None:
            continue
        out[name] = {"to_core": int(e["rx_bytes"]), "from_core": int(e["tx_bytes"]),
                     "to_core_packets": int(e["rx_packets"]),
                     "from_core_packets": int(e["tx_packets"]),
                     "dropped": int(e.get("rx_dropped", 0)) + int(e.get("tx_dropped", 0))}
    return out


def subtract(now: Mapping[str, Mapping[str, int]],
             before: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Counter deltas between two snapshots of class_totals/link_totals."""
    return {k: {f: int(v) - int(before.get(k, {}).get(f, 0)) for f, v in fields.items()}
            for k, fields in now.items()}
