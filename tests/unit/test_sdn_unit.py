"""SDN core, pure parts: flow rules per class, port-range masks, counters, the API routing,
the flow-move wrapper and the gap, bad input (CLI and LabSpec), and location updates through
the controller's API to `locate --serve` (real HTTP and line-JSON servers on loopback)."""

from __future__ import annotations

import json
import threading
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.edge.control import LocationServer, parse_update
from orchestrator.errors import ExitStatus, UserError
from orchestrator.lab.controller import rules
from orchestrator.lab.controller.api import (
    ControllerClient,
    LocationRelay,
    RelayAuth,
    check_endpoint,
    check_update,
    dispatch,
    serve_api,
)
from orchestrator.lab.controller.moves import longest_gap, migrate_with_flow_move
from orchestrator.lab.sdn import DAEMONS, ovs_files, stop_core
from orchestrator.lab.state import LabPaths
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


def test_a_move_outranks_the_node_rules_and_ends_even_under_traffic():
    flow = rules.move_flow("52:54:00:AA:01:01", 3)
    assert flow.match == {"eth_dst": "52:54:00:aa:01:01"} and flow.output == 3
    assert flow.priority > rules.PRIO_NODE
    # a hard timeout: an idle one is refreshed by clients retrying a VM that moved on
    # without a flow move, so a stale pin would cut it off for as long as they retry
    assert flow.hard_timeout == rules.MOVE_HOLD_S and flow.idle_timeout == 0
    assert rules.move_flow("52:54:00:aa:01:01", 3, hold_s=7).hard_timeout == 7


@pytest.mark.parametrize("mac, port, hold", [("zz", 1, 30), ("52:54:00:aa:01", 1, 30),
                                             ("52:54:00:aa:01:01", 0, 30),
                                             ("52:54:00:aa:01:01", 1, 0)])
def test_bad_moves_are_refused(mac, port, hold):
    with pytest.raises(UserError):
        rules.move_flow(mac, port, hold)


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

    def locate_endpoint(self) -> dict[str, Any]:
        return {"locate_endpoint": None, "received": len(self.locations)}

    def set_locate_endpoint(self, endpoint: str | None) -> dict[str, Any]:
        self.calls.append(("endpoint", endpoint))
        return {"locate_endpoint": endpoint}


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
    assert dispatch(fake, "POST", "/locate", {"device": "d1"})[0] == 400  # no bs
    update = {"device": "d1", "bs": "bs2"}
    assert dispatch(fake, "POST", "/locate", update) == (200, {"ok": True, "stored": True})
    assert dispatch(fake, "GET", "/locations", {}) == (200, [update])
    assert dispatch(fake, "POST", "/locate-endpoint", {"endpoint": "127.0.0.1:9"})[0] == 200
    assert dispatch(fake, "POST", "/locate-endpoint", {"endpoint": None})[0] == 200
    assert fake.calls[-2:] == [("endpoint", "127.0.0.1:9"), ("endpoint", None)]
    assert dispatch(fake, "POST", "/locate-endpoint", {})[0] == 400
    assert dispatch(fake, "GET", "/locate-endpoint", {})[1]["received"] == 1


@pytest.mark.parametrize("body", [
    [], {"device": "", "bs": "b"}, {"device": "d", "bs": 3}, {"device": "d", "bs": "b",
                                                             "members": "m1"},
    {"device": "d", "bs": "b", "members": [1]}, {"device": "d", "bs": "b", "at": "now"},
    {"device": "d", "bs": "b", "at": True}])
def test_bad_location_updates_are_refused(body):
    with pytest.raises(ValueError):
        check_update(body)


def test_update_shape_is_what_locate_serve_reads():
    update = {"device": "d1", "bs": "b2", "members": ["d2"], "at": 12.5}
    parsed = parse_update(json.dumps(check_update(update)).encode(), lambda: 0.0)
    assert (parsed.device, parsed.bs_id, parsed.members, parsed.at_s) == ("d1", "b2", ("d2",), 12.5)


@pytest.mark.parametrize("endpoint", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000",
                                      "host:80", "8.8.8.8:53", "10.77.0.2:9000"])
def test_bad_relay_endpoints_are_refused(endpoint):
    with pytest.raises(ValueError):
        check_endpoint(endpoint, {"10.77.0.1"})


def test_relay_keeps_updates_and_forwards_once_an_endpoint_is_set():
    sent: list[tuple[str, dict[str, Any]]] = []
    relay = LocationRelay(allowed={"10.77.0.1"},
                          forward=lambda e, u: sent.append((e, u)) or {"ok": True, "actions": []})
    assert relay.locate({"device": "d1", "bs": "b1"}) == {"ok": True, "stored": True}
    assert relay.set_endpoint("10.77.0.1:7000") == {"locate_endpoint": "10.77.0.1:7000",
                                                    "received": 1}
    assert relay.locate({"device": "d1", "bs": "b2"}) == {"ok": True, "actions": []}
    assert sent == [("10.77.0.1:7000", {"device": "d1", "bs": "b2"})]
    assert relay.set_endpoint(None)["locate_endpoint"] is None
    relay.locate({"device": "d1", "bs": "b3"})
    assert len(sent) == 1 and len(relay.updates) == 3
    with pytest.raises(ValueError):
        relay.set_endpoint("10.77.0.9:7000")


class FakePlane:
    """What `locate --serve`'s LocationServer calls: the control plane's handle()."""

    def __init__(self) -> None:
        self.updates: list[Any] = []

    def clock(self) -> float:
        return 100.0

    def handle(self, update: Any) -> list[dict[str, Any]]:
        self.updates.append(update)
        return [{"verdict": "place", "proxy": "proxy-u1", "source": None,
                 "destination": "fog2", "result": {"status": "completed"}}]


@pytest.fixture
def mme_server():
    """A real `locate --serve` line-JSON server on loopback with a fake control plane."""
    plane = FakePlane()
    auth = RelayAuth(b"k" * 32)
    server = LocationServer(("127.0.0.1", 0), plane, RelayAuth(auth.key))  # type: ignore[arg-type]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield plane, f"127.0.0.1:{server.server_address[1]}", auth
    finally:
        server.shutdown()
        server.server_close()


def test_controller_api_forwards_updates_to_locate_serve(mme_server):
    plane, endpoint, auth = mme_server
    controller = FakeController()
    relay = LocationRelay(auth=auth)
    controller.locate = relay.locate  # type: ignore[method-assign]
    controller.set_locate_endpoint = relay.set_endpoint  # type: ignore[method-assign]
    api = serve_api(controller, "127.0.0.1", 0)
    try:
        client = ControllerClient(f"http://127.0.0.1:{api.server_address[1]}", timeout_s=5)
        client.set_locate_endpoint(endpoint)
        reply = client.locate({"device": "d1", "bs": "b2", "members": ["d2"]})
    finally:
        api.shutdown()
        api.server_close()
    assert reply["ok"] and reply["actions"][0]["destination"] == "fog2"
    [update] = plane.updates
    assert (update.device, update.bs_id, update.members) == ("d1", "b2", ("d2",))
    assert update.at_s == 100.0  # no "at": the MME's clock


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


@pytest.fixture
def lab_controller(tmp_path, monkeypatch):
    """A lab whose controller API is a fake with a real relay, served on loopback: what the
    CLI finds through the lab's controller config."""
    state, prefix = tmp_path / "state", "hcore"
    monkeypatch.setenv("EDGEIOT_STATE_DIR", str(state))
    monkeypatch.setenv("EDGEIOT_LAB", prefix)
    controller, relay = FakeController(), LocationRelay(allowed={"10.77.0.1"})
    controller.locate = relay.locate  # type: ignore[method-assign]
    controller.locate_endpoint = relay.describe  # type: ignore[method-assign]
    controller.set_locate_endpoint = relay.set_endpoint  # type: ignore[method-assign]
    api = serve_api(controller, "127.0.0.1", 0)
    files = ovs_files(LabPaths(state, prefix).root, prefix)
    files.directory.mkdir(parents=True)
    files.controller_config.write_text(json.dumps({
        "api_host": "127.0.0.1", "api_port": api.server_address[1], "gateway": "10.77.0.1"}))
    try:
        yield relay
    finally:
        api.shutdown()
        api.server_close()


def test_cli_location_update_through_the_controller_reaches_the_mme(cli, lab_controller,
                                                                    mme_server):
    plane, endpoint, auth = mme_server
    lab_controller.auth = auth
    kept = cli("core", "locate", "d1", "--bs", "b1", "--json")
    assert kept.status == ExitStatus.SUCCESS and kept.json() == {"ok": True, "stored": True}
    assert cli("core", "relay").out.strip().endswith("are only kept")
    relayed = cli("core", "relay", endpoint, "--json")
    assert relayed.status == ExitStatus.SUCCESS
    assert relayed.json() == {"locate_endpoint": endpoint, "received": 1}
    done = cli("core", "locate", "d1", "--bs", "b2", "--member", "d2")
    assert done.status == ExitStatus.SUCCESS and "fog2" in done.out and "place" in done.out
    assert [(u.device, u.bs_id, u.members) for u in plane.updates] == [("d1", "b2", ("d2",))]
    assert cli("core", "relay", "--off", "--json").json()["locate_endpoint"] is None
    assert len(lab_controller.updates) == 2


@pytest.mark.parametrize("args, message", [
    (["8.8.8.8:53"], "only loopback or the lab gateway"),
    (["127.0.0.1"], "ADDR:PORT"),
    (["127.0.0.1:9", "--off"], "not both"),
])
def test_cli_relay_refuses_bad_endpoints(cli, lab_controller, args, message):
    result = cli("core", "relay", *args)
    assert result.status == ExitStatus.BAD_INPUT and message in result.err


def test_cli_relay_accepts_the_lab_gateway(cli, lab_controller):
    result = cli("core", "relay", "10.77.0.1:7000", "--json")
    assert result.status == ExitStatus.SUCCESS
    assert result.json()["locate_endpoint"] == "10.77.0.1:7000"


def test_stop_core_is_idempotent_and_ignores_pids_that_are_not_ours(tmp_path: Path):
    assert stop_core(tmp_path, "hx") == 0  # no SDN core at all
    files = ovs_files(tmp_path, "hx")
    files.directory.mkdir(parents=True)
    for daemon in DAEMONS:  # a reused pid (pid 1) is never signalled
        files.pidfile(daemon).write_text("1\n")
    assert stop_core(tmp_path, "hx") == 0
    assert not files.directory.exists()
