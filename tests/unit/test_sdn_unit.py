"""SDN core, pure parts: flow rules per class, port-range masks, counters, the API routing,
the flow-move wrapper and the gap, and bad input (CLI and LabSpec)."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.errors import ExitStatus, UserError
from orchestrator.lab.controller import rules
from orchestrator.lab.controller.api import dispatch
from orchestrator.lab.controller.moves import longest_gap, migrate_with_flow_move
from orchestrator.lab.sdn import DAEMONS, ovs_files, stop_core
from orchestrator.lab.topology import LabSpec

# --- rules ---------------------------------------------------------------------------------

def test_migration_port_range_is_one_masked_match():
    assert rules.port_masks(49152, 49215) == [(0xC000, 0xFFC0)]
    assert rules.port_masks(22, 22) == [(22, 0xFFFF)]


@given(st.integers(0, 0xFFFF), st.integers(0, 300))
def test_port_masks_cover_exactly_the_range(low, width):
    high = min(0xFFFF, low + width)
    covered = set()
    for value, mask in rules.port_masks(low, high):
        size = (~mask & 0xFFFF) + 1
        assert value & ~mask & 0xFFFF == 0
        covered |= set(range(value, value + size))
    assert covered == set(range(low, high + 1))


def test_port_masks_refuse_bad_ranges():
    for low, high in [(10, 5), (-1, 3), (0, 70000)]:
        with pytest.raises(UserError):
            rules.port_masks(low, high)


def flows_of(flows: list[rules.Flow], name: str) -> list[rules.Flow]:
    return [f for f in flows if f.cookie == rules.class_cookie(name)]


def test_every_class_rule_counts_both_directions_and_continues_to_forwarding():
    flows = rules.classification_flows(metered=False)
    raw = flows_of(flows, "raw")
    assert {(f.match["ip_proto"], k, v) for f in raw for k, v in f.match.items()
            if k.endswith(("_src", "_dst"))} == {
        (6, "tcp_dst", 7071), (6, "tcp_src", 7071), (17, "udp_dst", 7071),
        (17, "udp_src", 7071)}
    assert {f.match.get("tcp_dst") for f in flows_of(flows, "metadata")} == {7072, None}
    control_ports = {f.match.get("tcp_dst") for f in flows_of(flows, "control")} - {None}
    assert control_ports == {16509, 16514, 22, 9100, 7070}
    assert all(f.table == 0 and f.goto == 1 and f.output is None for f in flows)
    assert all(f.meter is None for f in flows)
    (other,) = flows_of(flows, "other")
    assert other.match == {} and other.priority == 0


def test_only_the_migration_class_goes_through_the_meter():
    flows = rules.classification_flows(metered=True)
    metered = [f for f in flows if f.meter is not None]
    assert metered and all(rules.cookie_class(f.cookie) == "migration" for f in metered)
    assert {f.match.get("tcp_dst") for f in metered} == {(0xC000, 0xFFC0), None}


def test_forwarding_pins_nodes_and_gateway_and_falls_back_to_normal():
    flows = rules.forwarding_flows({"02:00:00:00:00:01": 1, "02:00:00:00:00:02": 2},
                                   "02:00:00:00:00:fe")
    outputs = {f.match.get("eth_dst"): f.output for f in flows}
    assert outputs == {None: "NORMAL", "02:00:00:00:00:01": 1, "02:00:00:00:00:02": 2,
                       "02:00:00:00:00:fe": "LOCAL"}
    assert all(f.table == 1 for f in flows)


def test_a_move_outranks_the_node_rules_and_expires_when_idle():
    flow = rules.move_flow("52:54:00:AA:01:01", 3)
    assert flow.match == {"eth_dst": "52:54:00:aa:01:01"} and flow.output == 3
    assert flow.priority > rules.PRIO_NODE and flow.idle_timeout > 0


@pytest.mark.parametrize("mac, port", [("zz", 1), ("52:54:00:aa:01", 1),
                                       ("52:54:00:aa:01:01", 0)])
def test_bad_moves_are_refused(mac, port):
    with pytest.raises(UserError):
        rules.move_flow(mac, port)


def test_meter_band_and_bad_rates():
    assert rules.meter_band(80) == (80000, 16000)
    assert rules.meter_band(1) == (1000, 1000)
    for rate in (0, -3):
        with pytest.raises(UserError):
            rules.meter_band(rate)


# --- counters ------------------------------------------------------------------------------

def test_class_totals_sum_rules_per_class_and_ignore_foreign_rules():
    c = rules.class_cookie
    entries = [
        {"cookie": c("raw"), "byte_count": 100, "packet_count": 1, "table_id": 0},
        {"cookie": c("raw"), "byte_count": 50, "packet_count": 2, "table_id": 0},
        {"cookie": c("migration"), "byte_count": 7, "packet_count": 1, "table_id": 0},
        {"cookie": c("other"), "byte_count": 3, "packet_count": 3, "table_id": 0},
        {"cookie": c("raw"), "byte_count": 999, "packet_count": 9, "table_id": 1},  # fwd
        {"cookie": 0x1234, "byte_count": 999, "packet_count": 9, "table_id": 0},  # not ours
    ]
    totals = rules.class_totals(entries)
    assert totals["raw"] == {"bytes": 150, "packets": 3}
    assert totals["migration"] == {"bytes": 7, "packets": 1}
    assert totals["metadata"] == {"bytes": 0, "packets": 0}
    assert totals["other"] == {"bytes": 3, "packets": 3}
    assert set(totals) == set(rules.CLASS_NAMES)


def test_cookie_round_trip_and_foreign_cookies():
    for name in rules.CLASS_NAMES:
        assert rules.cookie_class(rules.class_cookie(name)) == name
    assert rules.cookie_class(0) is None
    assert rules.cookie_class(rules.COOKIE_BASE | 999) is None


def test_link_totals_name_ports_and_skip_local():
    entries = [{"port_no": 1, "rx_bytes": 10, "tx_bytes": 20, "rx_packets": 1, "tx_packets": 2,
                "rx_dropped": 1, "tx_dropped": 0},
               {"port_no": 0xFFFFFFFE, "rx_bytes": 5, "tx_bytes": 5, "rx_packets": 1,
                "tx_packets": 1}]
    assert rules.link_totals(entries, {1: "fog1"}) == {
        "fog1": {"to_core": 10, "from_core": 20, "to_core_packets": 1,
                 "from_core_packets": 2, "dropped": 1}}


def test_subtract_gives_deltas():
    before = {"raw": {"bytes": 10, "packets": 1}}
    now = {"raw": {"bytes": 25, "packets": 3}, "other": {"bytes": 4, "packets": 1}}
    assert rules.subtract(now, before) == {"raw": {"bytes": 15, "packets": 2},
                                           "other": {"bytes": 4, "packets": 1}}


# --- API routing -----------------------------------------------------------------------------

class FakeController:
    def __init__(self) -> None:
        self.locations: deque[dict[str, Any]] = deque()
        self.calls: list[tuple[str, Any]] = []

    def stats(self) -> dict[str, Any]:
        return {"connected": True}

    def add_node(self, name: str, port: int, mac: str) -> dict[str, Any]:
        self.calls.append(("node", (name, port, mac)))
        return {"node": name}

    def move(self, mac: str, node: str) -> dict[str, Any]:
        rules.check_mac(mac)
        if node != "fog2":
            raise KeyError(node)
        return {"mac": mac, "node": node}

    def locate(self, update: dict[str, Any]) -> dict[str, Any]:
        self.locations.append(update)
        return {"ok": True, "stored": True}


def test_dispatch_routes_and_maps_errors():
    fake = FakeController()
    assert dispatch(fake, "GET", "/stats", {}) == (200, {"connected": True})
    assert dispatch(fake, "POST", "/move", {"mac": "52:54:00:00:00:01", "node": "fog2"})[0] == 200
    assert dispatch(fake, "POST", "/move", {"mac": "bad", "node": "fog2"})[0] == 400
    assert dispatch(fake, "POST", "/move", {"mac": "52:54:00:00:00:01", "node": "x"})[0] == 400
    assert dispatch(fake, "POST", "/move", {})[0] == 400
    assert dispatch(fake, "POST", "/nodes", {"name": "fog1", "port": "x", "mac": "m"})[0] == 400
    assert dispatch(fake, "GET", "/nope", {})[0] == 404
    assert dispatch(fake, "POST", "/locate", {})[0] == 400
    update = {"device": "d1", "bs": "bs2"}
    assert dispatch(fake, "POST", "/locate", update) == (200, {"ok": True, "stored": True})
    assert dispatch(fake, "GET", "/locations", {}) == (200, [update])


# --- flow moves and the gap --------------------------------------------------------------------

class Mover:
    def __init__(self) -> None:
        self.moves: list[tuple[str, str]] = []

    def move(self, mac: str, node: str) -> dict[str, str]:
        self.moves.append((mac, node))
        return {"node": node}


def test_flow_moves_only_after_a_completed_migration():
    mover = Mover()
    done = migrate_with_flow_move(lambda: {"status": "completed"}, mover, "m", "fog2")
    assert mover.moves == [("m", "fog2")] and done["flow_move"] == {"node": "fog2"}
    failed = migrate_with_flow_move(lambda: {"status": "failed"}, mover, "m", "fog3")
    assert mover.moves == [("m", "fog2")] and "flow_move" not in failed
    assert migrate_with_flow_move(lambda: {"status": "completed"}, None, "m", "x") == {
        "status": "completed"}


def test_longest_gap():
    assert longest_gap([0.1, 0.2, 0.9, 1.0], 0.0, 1.0) == pytest.approx(0.7)
    assert longest_gap([], 0.0, 2.0) == 2.0
    assert longest_gap([5.0], 0.0, 1.0) == 1.0  # answers outside the window do not count


# --- bad input and teardown without a lab ---------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"core": "ovs"}, "--core must be one of"),
    ({"core": "sdn", "migration_mbit": 0}, "--migration-mbit must be > 0"),
    ({"core": "sdn", "migration_mbit": -1}, "--migration-mbit must be > 0"),
    ({"migration_mbit": 20}, "needs the SDN core"),
])
def test_lab_spec_refuses_bad_core_input(kwargs, message):
    with pytest.raises(UserError, match=message):
        LabSpec(**kwargs)


def test_default_core_is_the_linux_bridge():
    assert LabSpec().core == "bridge" and LabSpec(core="sdn", migration_mbit=20).core == "sdn"


@pytest.mark.parametrize("args, message", [
    (["--core", "foo"], "--core must be one of"),
    (["--core", "sdn", "--migration-mbit", "0"], "--migration-mbit must be > 0"),
    (["--core", "sdn", "--migration-mbit", "-2"], "--migration-mbit must be > 0"),
])
def test_lab_up_refuses_bad_core_input(cli, args, message):
    result = cli("lab", "up", "--prefix", "hbad", *args)
    assert result.status == ExitStatus.BAD_INPUT
    assert message in result.err and len(result.err.strip().splitlines()) == 1


def test_core_stats_without_an_sdn_core_is_bad_input(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEIOT_STATE_DIR", str(tmp_path))
    result = cli("core", "stats", "--prefix", "hnone")
    assert result.status == ExitStatus.BAD_INPUT and "no SDN core" in result.err


def test_stop_core_is_idempotent_and_ignores_pids_that_are_not_ours(tmp_path: Path):
    assert stop_core(tmp_path, "hx") == 0  # no SDN core at all
    files = ovs_files(tmp_path, "hx")
    files.directory.mkdir(parents=True)
    for daemon in DAEMONS:  # a reused pid (pid 1) is never signalled
        files.pidfile(daemon).write_text("1\n")
    assert stop_core(tmp_path, "hx") == 0
    assert not files.directory.exists()
