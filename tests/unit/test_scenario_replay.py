"""The live replay's pure parts, without a lab: the devices each user gets (their IDs,
registrations, Eq. 1 rates, location updates, radio attachments, the emulator's spec as
the real emulator reads it), the exactly-once verdict, the engine played over the lab
test's trace (decompose / compose / migrate / stay where the trace says), the simulator's
split into users that decompose and users that migrate whole, the decision rows, and the
worker queues (a user's actions in order; actions planned before a failure skipped)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.devices.emulator import Emulator
from orchestrator.commands.scenario import decision_rows
from orchestrator.edge import scenario as sc
from orchestrator.edge.control import ControlPlane
from orchestrator.edge.devices import DeviceRegistry
from orchestrator.edge.scenario_actions import ReplayApplier, decision_row, with_outcomes
from orchestrator.edge.scenario_devices import (
    attachments,
    device_rates,
    emulator_spec,
    exactly_once,
    first_update,
    plan_devices,
    registrations,
    roam_update,
)
from orchestrator.errors import ExitStatus, OrchestratorError
from orchestrator.model.controller import (
    Action,
    ConstantDwell,
    Controller,
    ControlParams,
    TmigCache,
)
from orchestrator.model.mme import Mme
from orchestrator.store import Store

NODES = ["fog1", "fog2", "fog3"]
BS_MAP = {"0": "fog1", "1": "fog2", "2": "fog3"}
# the lab test's trace: u0's car away 8 minutes, u1 (no home device) away 8 minutes and
# back for the last one, u2's car on a 1-minute trip
LONG = {0: [0] + [2] * 8 + [0] * 2, 1: [1] * 2 + [2] * 8 + [1], 2: [2] * 5 + [0] + [2] * 5}


def trace(plan: dict[int, list[int]]) -> sc.Trace:
    return sc.parse_small_trace([f"{u},{m},{b}" for u, bs in plan.items()
                                 for m, b in enumerate(bs)])


# ----------------------------------------------------------------------------- devices


def test_each_user_gets_a_home_device_and_a_car_unless_roaming(tmp_path: Path) -> None:
    plan = plan_devices(["u0", "u1"], roaming=["u1"])
    assert plan["u0"].home is not None and plan["u1"].home is None
    assert plan["u0"].all == (plan["u0"].home, *plan["u0"].mobile)
    assert plan["u1"].all == plan["u1"].mobile
    assert len({d for p in plan.values() for d in p.all}) == 5  # unique across users
    store = Store(tmp_path / "r.sqlite")  # the registry accepts what the replay records
    registry = DeviceRegistry(store)
    for user, devs in plan.items():
        store.add_user(user, f"px-{user}")
        for d in registrations(devs):
            registry.add(d["id"], user, d["type"], d["mobility"], d["role"], group=d["grp"])
    rows = {d["id"]: d for d in store.devices()}
    assert rows[plan["u0"].home]["mobility"] == "static"
    assert {rows[d]["grp"] for d in plan["u0"].mobile} == {"car-u0"}
    assert {rows[d]["type"] for d in plan["u0"].mobile} == {"gps", "speed"}


def test_the_cars_gps_carries_the_bulk_rate() -> None:
    devs = plan_devices(["u0"])["u0"]
    rates = device_rates(devs, 7e6, hz=5.0)
    assert rates[devs.gps] > 7e6 and rates[devs.speed] < 1e3
    assert devs.home is not None and rates[devs.home] == rates[devs.speed]


def test_updates_first_everyone_then_the_car() -> None:
    devs = plan_devices(["u0"])["u0"]
    mme = Mme.from_maps(BS_MAP, dict.fromkeys(devs.all, "u0"))
    first = mme.update(first_update(devs, "0", 0.0))
    assert sorted(r.device for r in first) == sorted(devs.all)
    roams = mme.update(roam_update(devs, "2", 3.0))
    assert sorted(r.device for r in roams) == sorted(devs.mobile)
    assert devs.home is not None and mme.where(devs.home) == ("0", "fog1")


def test_radios_home_stays_home_car_goes_where_the_trace_says() -> None:
    devs, roaming = plan_devices(["u0", "u1"], ["u1"]).values()
    assert attachments(devs, "/run/netns/h", "/run/netns/c") == {
        devs.home: "/run/netns/h", devs.gps: "/run/netns/c", devs.speed: "/run/netns/c"}
    assert set(attachments(roaming, "/run/netns/h", "/run/netns/c").values()) == {
        "/run/netns/c"}


def test_the_emulator_reads_the_spec(tmp_path: Path) -> None:
    devs = plan_devices(["u0"])["u0"]
    radios = tmp_path / "radios.json"
    radios.write_text('{"x": "/run/netns/a"}')
    spec = emulator_spec(devs, 5.0, tmp_path / "directory.json", "10.72.0.0/16", "br-vm",
                         tmp_path / "report.json", radios)
    emulator = Emulator(spec)  # builds devices and sources; starts nothing
    assert sorted(emulator.devices) == sorted(devs.all)
    assert emulator.attachments.current == {"x": "/run/netns/a"}
    assert spec["rate"] == 5.0 and spec["user"] == "u0"


def sent(n: int = 100, **kw: Any) -> dict[str, Any]:
    return {"sent": n, "acked": n, "chain": "c", "served_by": ["px-u0"], **kw}


def got(n: int = 100, **kw: Any) -> dict[str, Any]:
    return {"accepted": n, "next": n + 1, "chain": "c", "invalid": 0, "duplicates": 0,
            "away": False, "proxy": "px-u0", **kw}


@pytest.mark.parametrize(("s", "g", "ok"), [
    (sent(), got(), True),
    (sent(acked=99), got(), False),  # one record never acknowledged
    (sent(), got(99, next=101), False),  # accepted fewer than sent
    (sent(), got(next=100), False),  # the proxy expects a record again
    (sent(), got(chain="d"), False),  # other records, or another order
    (sent(), got(invalid=1, accepted=99), False),
    (sent(), got(away=True), False),  # released and never adopted
    (None, got(), False),  # no final report: the emulator did not drain
    (sent(), None, False),  # no proxy serves it
    (sent(0), got(0, next=1, chain="c"), False),  # nothing sent proves nothing
])
def test_exactly_once(s: dict[str, Any] | None, g: dict[str, Any] | None, ok: bool) -> None:
    figures = exactly_once(s, g)
    assert figures["exactly_once"] is ok
    if s and g:
        assert (figures["sent"], figures["accepted"]) == (s["sent"], g["accepted"])


# ----------------------------------------------------------------------------- the engine


def play(policy: str, cfg: sc.ReplayConfig, plan: dict[int, list[int]] = LONG
         ) -> list[tuple[int, str, str, str | None]]:
    """The engine over the trace as the replay feeds it: (minute, user, verdict, node)."""
    t = trace(plan)
    ctl = sc.make_controller(t, BS_MAP, NODES, cfg, policy, clock=lambda: 0.0)
    devices = plan_devices(t.users, cfg.roaming_users)
    out = []
    for minute, user, bs in sc.roam_schedule(t):
        at = minute * cfg.minute_s
        update = (first_update if minute == 0 else roam_update)(devices[user], bs, at)
        for action in ctl.on_roams(ctl.mme.update(update)):
            out.append((minute, user, action.kind, action.destination))
    return out


LONG_CFG = sc.ReplayConfig(speedup=20.0, r_data_bps=7e6, roaming_users=("u1",))


def test_long_trace_decomposes_composes_and_migrates_where_it_says() -> None:
    rule = [a for a in play("dynamic", LONG_CFG) if a[2] != "place"]
    assert rule == [(1, "u0", "decompose", "fog3"), (2, "u1", "migrate", "fog3"),
                    (5, "u2", "stay", "fog1"), (9, "u0", "reassign", "fog1"),
                    (9, "u0", "compose", "fog1"), (10, "u1", "stay", "fog2")]
    assert [a for a in play("dynamic+replicas", LONG_CFG) if a[2] != "place"] == rule


def test_static_policy_only_stays_and_decomposition_can_be_off() -> None:
    assert {a[2] for a in play("static", LONG_CFG)} == {"place", "stay"}
    off = sc.ReplayConfig(speedup=20.0, r_data_bps=7e6, decompose=False)
    verdicts = [a[2] for a in play("dynamic", off) if a[2] != "place"]
    assert "decompose" not in verdicts and "migrate" not in verdicts  # home devices pin them


def test_low_data_rate_makes_a_long_trip_stay() -> None:
    cfg = sc.ReplayConfig(speedup=20.0, r_data_bps=1e5, roaming_users=("u1",))
    assert {a[2] for a in play("dynamic", cfg)} == {"place", "stay"}


# ----------------------------------------------------------------------------- simulator


def test_simulator_splits_users_that_decompose_from_users_that_migrate_whole() -> None:
    t = trace(LONG)
    places = sc.node_minutes(t, BS_MAP, NODES)
    cfg = LONG_CFG
    parted = np.array([True, False, True])
    split = sc.simulate(places, 3, cfg, 2.45, 1.8, 1.77, parted)
    whole = sc.simulate(places, 3, cfg, 2.45, 1.8)
    assert split["static"] == whole["static"]  # nothing moves: the split changes nothing
    assert split["dynamic"]["migrations"] == whole["dynamic"]["migrations"] == 2
    # the mobile parts (no disk) move fewer bytes than whole proxies
    assert split["dynamic"]["migration_bytes"] < whole["dynamic"]["migration_bytes"]
    # additive: the split equals the two groups simulated as traces of their own
    part = sc.simulate(places[parted], 3, cfg, 1.77, 1.77)
    rest = sc.simulate(places[~parted], 3, cfg, 2.45, 1.8)
    assert split["dynamic"]["core_bytes"] == pytest.approx(
        part["dynamic"]["core_bytes"] + rest["dynamic"]["core_bytes"], rel=0.02)


def test_select_users_renumbers() -> None:
    places = np.array([[0, 1, 1], [2, 2, 2], [1, 0, 0]])
    visits = sc.dwell_model.visits_from_minutes(places)
    pred = np.arange(len(visits), dtype=np.float64)
    sub, p = sc.select_users(visits, pred, np.array([False, True, True]))
    assert sub.n_users == 2 and sub.user.tolist() == [0, 1, 1]
    assert sub.place.tolist() == [2, 1, 0] and p.tolist() == pred[2:].tolist()


# ----------------------------------------------------------------------------- rows


def test_decision_rows_carry_minute_node_figures_and_later_outcomes() -> None:
    event = {"verdict": "decompose", "user": "u0", "proxy": "px-u0", "source": "fog1",
             "destination": "fog3", "devices": ["g", "s"], "at_s": 3.1, "into": "px-u0-m",
             "t_mig_s": 1.77, "threshold_s": 2.8, "dwell_s": 24.0, "migrate": True,
             "result": {"status": "submitted", "job": 0}}
    row = decision_row(1, event)
    assert (row["minute"], row["verdict"], row["node"], row["status"]) == (
        1, "decompose", "fog3", "submitted")
    assert row["threshold_s"] == 2.8 and "migrate" not in row
    stay = decision_row(5, {**event, "verdict": "stay", "result": {"status": "nothing to do"}})
    [done, kept] = with_outcomes([row, stay], [{"status": "decomposed", "boot_s": 6.1,
                                                "handover": {"big": "record"}}])
    assert done["status"] == "decomposed" and done["outcome"] == {"status": "decomposed",
                                                                  "boot_s": 6.1}
    assert "job" not in done and kept["status"] == "nothing to do" and "outcome" not in kept


def test_device_summary() -> None:
    devices = {"u0": {"a": {"sent": 10, "exactly_once": True},
                      "b": {"sent": 5, "exactly_once": False}}, "u1": {}}
    assert sc.device_summary(devices) == {"devices": 2, "records": 15, "exactly_once": 1}


# ----------------------------------------------------------------------------- workers


class Queued(ReplayApplier):
    """The queueing under test; the fleet work replaced by a record of what ran."""

    def __init__(self, state_dir: Path, gate: threading.Event) -> None:
        super().__init__(None, state_dir, False, 0)  # type: ignore[arg-type]
        self.ran: list[tuple[str, str]] = []
        self.gate = gate

    def _apply(self, action: Action, store: Store) -> dict[str, Any]:
        self.gate.wait(5)
        self.ran.append((action.user, action.kind))
        if action.kind == "decompose":
            raise OrchestratorError("boot timed out")
        return {"status": "completed" if action.kind == "migrate" else "composed"}


def action(kind: str, user: str) -> Action:
    return Action(kind, user, f"px-{user}", "fog1", "fog2", ("d",), 0.0, into=f"px-{user}-m")


def test_workers_keep_order_and_skip_what_was_planned_before_a_failure(tmp_path: Path) -> None:
    store = Store(tmp_path / "records.sqlite")
    ctl = Controller(ControlParams(), TmigCache(), ConstantDwell(60.0), Mme(), clock=lambda: 0)
    gate = threading.Event()
    applier = Queued(tmp_path, gate)
    plane = ControlPlane(ctl, applier, store)
    applier.epoch = lambda user: plane.failures.get(user, 0)
    applier.on_done = lambda a, r: plane.report_failure(a) if r["status"] == "failed" else None
    for a in (action("decompose", "u0"), action("compose", "u0"), action("migrate", "u1")):
        assert applier.apply(a)["status"] == "submitted"
    assert applier.apply(action("stay", "u0")) == {"status": "nothing to do"}
    gate.set()
    outcomes = [(a.user, a.kind, r["status"]) for a, r in applier.wait()]
    assert outcomes == [("u0", "decompose", "failed"), ("u0", "compose", "skipped"),
                        ("u1", "migrate", "completed")]
    assert ("u0", "compose") not in applier.ran and plane.failures == {"u0": 1}
    planned_after = applier.apply(action("migrate", "u0"))  # the engine knows: runs
    assert planned_after == {"status": "submitted", "job": 3}
    assert applier.wait()[-1][1]["status"] == "completed"


# ----------------------------------------------------------------------------- the command


@pytest.mark.usefixtures("isolated_state")
def test_roaming_user_must_be_in_the_trace(cli, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("user,minute,bs_id\n0,0,0\n0,1,1\n")
    bad = cli("scenario", "run", str(path), "--roaming-user", "u7")
    assert bad.status == ExitStatus.BAD_INPUT and "u7" in bad.err and "u0" in bad.err


def test_decision_table_leaves_first_sightings_out() -> None:
    policies = [{"policy": "dynamic", "actions": [
        {"minute": 0, "user": "u0", "verdict": "place", "node": "fog1", "status": "placed"},
        {"minute": 1, "user": "u0", "verdict": "decompose", "node": "fog3", "t_mig_s": 1.773,
         "threshold_s": 2.826, "status": "decomposed"},
        {"minute": 9, "user": "u0", "verdict": "compose", "node": "fog1",
         "status": "composed"}]}]
    assert decision_rows(policies) == [
        ("dynamic", 1, "u0", "decompose", "fog3", "1.77", "2.83", "decomposed"),
        ("dynamic", 9, "u0", "compose", "fog1", "", "", "composed")]


def test_core_counter_deltas_per_node_and_per_class(tmp_path: Path) -> None:
    before = {"raw": {"bytes": 100, "packets": 2}, "migration": {"bytes": 0, "packets": 0}}
    after = {"raw": {"bytes": 250, "packets": 5}, "migration": {"bytes": 9000, "packets": 7},
             "new": {"bytes": 1, "packets": 1}}
    assert sc.counter_deltas(after, before) == {"raw": {"bytes": 150, "packets": 3},
                                                "migration": {"bytes": 9000, "packets": 7}}

    def hooks(core_classes: Any) -> sc.LabHooks:
        return sc.LabHooks(core_bytes=dict, enter=lambda n: [], netns=str, subnet="10.9.0.0/16",
                           bridge="br-vm", core_classes=core_classes)

    def replay(lab: sc.LabHooks) -> sc.Replay:
        trace = sc.parse_small_trace(["0,0,0"])
        return sc.Replay(None, None, tmp_path, lab, trace, {}, sc.ReplayConfig())  # type: ignore[arg-type]

    def down() -> None:
        raise OrchestratorError("the controller does not answer")

    assert replay(hooks(None))._core_classes() is None  # the Linux-bridge core
    assert replay(hooks(lambda: None))._core_classes() is None  # controller without a switch
    assert replay(hooks(down))._core_classes() is None
    assert replay(hooks(lambda: after))._core_classes() == after
