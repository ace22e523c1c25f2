"""The control plane on a real lab: a small trace replayed under the three policies.

3 users, 3 fog nodes, a few roams, real devices. u0 and u2 have a device at home and a car
that roams with the trace; u1 has no home device (everything roams: the proxy migrates
whole). At most 4 VMs (128 MiB) at once — the 3 proxies and u0's mobile part — all
destroyed after each policy.

Checks: every decision logged with inputs, threshold and verdict, and reported in the
result with its trace minute and node; u0's car leaving home for 8 minutes decomposes its
proxy at the roam minute (a mobile part boots where the car is) and coming back composes
it, while u2's 1-minute trip stays, as Eq. 1 says; every device's records are accepted
exactly once under every policy (sent == acked == accepted, next == sent + 1, equal hash
chains), the car's devices served by px-u0, px-u0-m, px-u0; dynamic moves fewer core bytes
than static when r_data is high (long dwell), and stays put — so moves no fewer — when
dwell times are short; replicas make u1's migration incremental and cut core bytes.
"""

from __future__ import annotations

import json

import pytest

from orchestrator.commands.scenario import replay
from orchestrator.edge import scenario as sc
from orchestrator.edge.scenario_devices import plan_devices
from orchestrator.store import open_store
from tests.integration.conftest import lab_fixture

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

lab = lab_fixture("ectl", "10.72.0.0/16", nodes=3)

# BS 0 → fog1, 1 → fog2, 2 → fog3. u0's car leaves home (fog1) for 8 minutes at fog3 and
# comes back; u1 (no home device) goes from fog2 to fog3 for 8 minutes and back for the
# last minute; u2's car makes a 1-minute trip from fog3 to fog1.
LONG = {0: [0] + [2] * 8 + [0] * 2, 1: [1] * 2 + [2] * 8 + [1], 2: [2] * 5 + [0] + [2] * 5}
SHORT = {0: [0, 1, 0, 1, 0, 0], 1: [1] * 6, 2: [2] * 6}
LONG_CFG = sc.ReplayConfig(speedup=20.0, r_data_bps=7e6, roaming_users=("u1",))
CAR = plan_devices(["u0"])["u0"].mobile


def trace(plan: dict[int, list[int]]) -> sc.Trace:
    return sc.parse_small_trace([f"{u},{m},{b}" for u, bs in plan.items()
                                 for m, b in enumerate(bs)])


@pytest.fixture(scope="module")
def long_result(lab):
    result = replay(lab.state_dir, trace(LONG), list(sc.POLICIES), LONG_CFG)
    print("\ncontrol-plane replay:", json.dumps(measurements(result), indent=1))
    return result


def measurements(result):
    """The figures worth reading: bytes measured vs simulated, actions, records."""
    return {"t_mig_s": result["t_mig_s"], "t_mig_part_s": result["t_mig_part_s"],
            "policies": {p["policy"]: {
                "core_MB": round(p["core_bytes"] / 1e6, 1),
                "simulated_MB": round(result["simulated"][p["policy"]]["core_bytes"] / 1e6, 1),
                "to_core_MB": {n: round(c["to_core"] / 1e6, 1)
                               for n, c in p["core_bytes_by_node"].items()},
                "migration_MB": round(p["migration_bytes"] / 1e6, 1),
                "wall_s": p["wall_s"], "records": p["records"],
                "sent_per_device": {d: f["sent"] for fs in p["devices"].values()
                                    for d, f in fs.items()},
                "actions": [action_line(a) for a in p["actions"] if a["verdict"] != "place"]}
                for p in result["policies"]}}


def action_line(a):
    rule = (f" Tmig {a['t_mig_s']:.2f} s vs {a['threshold_s']:.2f} s (T_BS {a['dwell_s']:.1f})"
            if "threshold_s" in a else "")
    took = a.get("outcome", {}).get("total_s")
    return (f"min {a['minute']} {a['user']} {a['verdict']} @{a['node']}: {a['status']}{rule}"
            + (f", {took} s" if took else ""))


def by_policy(result):
    return {p["policy"]: p for p in result["policies"]}


def actions(p, user, *, rule_only=True):
    return [(a["minute"], a["verdict"], a["node"], a["status"]) for a in p["actions"]
            if a["user"] == user and (a["verdict"] != "place" or not rule_only)]


def test_every_decision_logged_with_inputs(lab, long_result):
    store = open_store(lab.state_dir)
    try:
        events = store.events("decision")
        migrations = store.migrations()
    finally:
        store.close()
    verdicts = [e["data"]["verdict"] for e in events]
    assert verdicts.count("place") == 9  # 3 users × 3 policies
    assert len(events) == sum(len(p["actions"]) for p in long_result["policies"])
    rule = [e["data"] for e in events if e["data"]["verdict"] in ("migrate", "decompose")
            or "threshold_s" in e["data"]]
    assert rule and all({"t_mig_s", "threshold_s", "dwell_s", "r_data_bps", "r_mig_bps",
                         "epsilon_bytes", "policy"} <= d.keys() for d in rule)
    for d in rule:  # the verdict is Eq. 1's (static logs what it would have done)
        if d["verdict"] in ("migrate", "decompose"):
            assert d["t_mig_s"] < d["threshold_s"]
    assert all(m["status"] == "completed" for m in migrations)
    for p in long_result["policies"]:
        assert p["failed_actions"] == [], p["failed_actions"]
        assert all(a["status"] in ("placed", "decomposed", "composed", "reassigned",
                                   "completed", "nothing to do") for a in p["actions"])


def test_decomposition_and_composition_happen_where_the_trace_says(long_result):
    p = by_policy(long_result)
    for policy in ("dynamic", "dynamic+replicas"):
        assert actions(p[policy], "u0") == [(1, "decompose", "fog3", "decomposed"),
                                            (9, "reassign", "fog1", "reassigned"),
                                            (9, "compose", "fog1", "composed")]
        assert (p[policy]["decompositions"], p[policy]["compositions"]) == (1, 1)
        [dec] = [a for a in p[policy]["actions"] if a["verdict"] == "decompose"]
        assert dec["into"] == "px-u0-m" and sorted(dec["devices"]) == sorted(CAR)
        assert dec["dwell_s"] == pytest.approx(8 * LONG_CFG.minute_s)  # the car's 8 minutes
        assert dec["t_mig_s"] < dec["threshold_s"] and dec["memory_bytes"] == 128 << 20
        assert dec["outcome"]["vm"] == "px-u0-m" and dec["outcome"]["boot_s"] > 0
        # u2's 1-minute trip: Eq. 1 says a mobile part would not pay off
        [(minute, verdict, node, _)] = actions(p[policy], "u2")
        assert (minute, verdict, node) == (5, "stay", "fog1")
        [stay] = [a for a in p[policy]["actions"] if a["user"] == "u2" and a["minute"] == 5]
        assert stay["t_mig_s"] > stay["threshold_s"] and stay["reason"] == "Eq. 1 says stay"
    static = p["static"]
    assert static["decompositions"] == static["compositions"] == static["migrations"] == 0
    assert [(m, v, n) for m, v, n, _ in actions(static, "u0")] == [(1, "stay", "fog3")]


def test_every_record_delivered_exactly_once_under_every_policy(long_result):
    for p in long_result["policies"]:
        devices = p["devices"]
        assert set(devices) == {"u0", "u1", "u2"}
        assert [len(devices[u]) for u in ("u0", "u1", "u2")] == [3, 2, 3]  # u1: no home
        for user, figures in devices.items():
            for dev, f in figures.items():
                assert f["exactly_once"], (p["policy"], user, dev, f)
                assert f["sent"] == f["acked"] == f["accepted"] > 100
                assert f["next"] == f["sent"] + 1 and f["chain_equal"] and f["invalid"] == 0
        assert p["records"]["exactly_once"] == p["records"]["devices"] == 8
        served = {d: f["served_by"] for d, f in devices["u0"].items()}
        home = next(d for d in served if d not in CAR)
        assert served[home] == ["px-u0"]
        expected = ["px-u0", "px-u0-m", "px-u0"] if p["policy"] != "static" else ["px-u0"]
        assert all(served[d] == expected for d in CAR), served


def test_dynamic_beats_static_when_data_rate_is_high(long_result):
    p = by_policy(long_result)
    assert p["static"]["migrations"] == 0
    assert p["dynamic"]["migrations"] == 1 and p["dynamic"]["failed_migrations"] == 0
    assert p["dynamic"]["decisions"].get("migrate") == 1
    assert actions(p["dynamic"], "u1") == [(2, "migrate", "fog3", "completed"),
                                           (10, "stay", "fog2", "nothing to do")]
    assert p["dynamic"]["core_bytes"] < p["static"]["core_bytes"]
    sim = long_result["simulated"]
    assert sim["dynamic"]["core_bytes"] < sim["static"]["core_bytes"] * 1.05
    # measured static traffic is the streams' remote time × r_data (±20 %)
    assert p["static"]["core_bytes"] == pytest.approx(sim["static"]["core_bytes"], rel=0.2)


def test_replicas_make_migration_incremental_and_cut_bytes(long_result):
    p = by_policy(long_result)
    assert p["dynamic+replicas"]["incremental_migrations"] == 1
    assert p["dynamic"]["incremental_migrations"] == 0
    # u1's migration leaves fog2: there the static part's bytes stayed home
    dyn, rep = (p[k]["core_bytes_by_node"]["fog2"]["to_core"]
                for k in ("dynamic", "dynamic+replicas"))
    assert dyn - rep > 0.5 * LONG_CFG.static_part_bytes
    # (totals differ by that too, give or take u0's decomposition: its car streams across
    # the core until the mobile part has booted, and a TCG boot under load varies by seconds)


def test_short_dwell_stays_as_the_rule_predicts(lab):
    cfg = sc.ReplayConfig(speedup=20.0, r_data_bps=2e6)
    result = replay(lab.state_dir, trace(SHORT), ["dynamic"], cfg)
    print("\nshort-dwell replay:", json.dumps(measurements(result)["policies"]))
    [dyn] = result["policies"]
    assert dyn["migrations"] == 0 and dyn["decisions"].get("migrate") is None
    assert dyn["decompositions"] == 0 and dyn["decisions"].get("decompose") is None
    assert dyn["decisions"]["stay"] == 2  # u0's two 1-minute trips
    assert [a["minute"] for a in dyn["actions"] if a["verdict"] == "stay"] == [1, 3]
    assert dyn["records"]["exactly_once"] == dyn["records"]["devices"] == 9
    # what it moved is what static moves (the streams of the short trips), not more
    static_sim = result["simulated"]["static"]["core_bytes"]
    assert dyn["core_bytes"] == pytest.approx(static_sim, rel=0.25)
