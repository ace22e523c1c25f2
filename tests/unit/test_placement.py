"""Replica choice (top-k), green-energy preference, power model and on-grid accounting."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.model.placement import (
    GreenTrace,
    Interval,
    PowerModel,
    account,
    choose_node,
    excess_green_w,
    intervals_from_timeline,
    minutes_per_node,
    plan_replicas,
    top_k_nodes,
)

NODES = st.sampled_from(["a", "b", "c", "d", "e", "f"])


def test_top_k_by_time_ties_by_name() -> None:
    minutes = {"b": 10.0, "a": 10.0, "c": 30.0, "d": 1.0, "e": 0.0}
    assert top_k_nodes(minutes, 2) == ["c", "a"]
    assert top_k_nodes(minutes) == ["c", "a", "b", "d"]  # k = 4 by default, never 0-minute
    assert top_k_nodes(minutes, 0) == []
    with pytest.raises(ValueError):
        top_k_nodes(minutes, -1)


@given(st.dictionaries(NODES, st.floats(0, 1e4)), st.integers(0, 6))
def test_top_k_is_the_k_largest(minutes: dict[str, float], k: int) -> None:
    top = top_k_nodes(minutes, k)
    assert len(top) == min(k, sum(1 for m in minutes.values() if m > 0))
    rest = [m for n, m in minutes.items() if n not in top]
    assert all(minutes[n] >= max(rest, default=0) for n in top)


def test_minutes_per_node_sums_and_rejects_negative() -> None:
    assert minutes_per_node([("a", 2), ("b", 1), ("a", 3)]) == {"a": 5, "b": 1}
    with pytest.raises(ValueError):
        minutes_per_node([("a", -1)])


def test_plan_keeps_home_and_diffs_current() -> None:
    plan = plan_replicas("u", {"a": 5, "b": 4, "c": 3}, current=["c", "z"], k=2, home="h")
    assert plan.nodes == ("h", "a")
    assert plan.add == ("h", "a")
    assert plan.drop == ("c", "z")


def test_power_model_and_excess_green() -> None:
    pm = PowerModel(idle_w=10, per_vcpu_w=5, per_gib_w=2)
    assert pm.node_w([(1, 1024), (2, 512)]) == pytest.approx(10 + 5 + 2 + 10 + 1)
    assert excess_green_w(GreenTrace.constant(30), pm, [(1, 1024)], 0.0) == pytest.approx(13)


def test_green_trace_steps_and_solar() -> None:
    tr = GreenTrace((0.0, 10.0), (5.0, 7.0))
    assert (tr.at(-1), tr.at(0), tr.at(9.9), tr.at(10), tr.at(1e9)) == (0, 5, 5, 7, 7)
    sun = GreenTrace.solar(100.0, 24.0)
    assert sun.at(0.0) == 0.0 and sun.at(12.0) == pytest.approx(100.0)
    with pytest.raises(ValueError):
        GreenTrace((1.0, 0.0), (1.0, 1.0))
    with pytest.raises(ValueError):
        GreenTrace((0.0,), (-1.0,))


def test_choose_node_never_trades_core_bytes_for_green() -> None:
    core = {"a": 100.0, "b": 100.0, "c": 50.0}
    green = {"a": 500.0, "b": 10.0, "c": -5.0}
    assert choose_node(core, green) == "c"
    assert choose_node(core, green, tolerance_bytes=50.0) == "a"
    assert choose_node({"a": 1.0, "b": 1.0}, {}) == "a"
    with pytest.raises(ValueError):
        choose_node({}, {})


@given(st.dictionaries(NODES, st.floats(0, 1e6), min_size=1),
       st.dictionaries(NODES, st.floats(-1e3, 1e3)), st.floats(0, 1e6))
def test_choose_node_within_tolerance(core: dict[str, float], green: dict[str, float],
                                      tol: float) -> None:
    pick = choose_node(core, green, tol)
    assert core[pick] <= min(core.values()) + tol
    fair = [n for n in core if core[n] <= min(core.values()) + tol]
    assert green.get(pick, -math.inf) == max(green.get(n, -math.inf) for n in fair)


def test_account_splits_green_and_grid() -> None:
    totals = account([Interval("a", 10, 50, 30), Interval("a", 10, 20, 30),
                      Interval("b", 2, 5, 0)])
    assert totals["a"].green_joules == pytest.approx(300 + 200)
    assert totals["a"].grid_joules == pytest.approx(200)
    assert totals["b"].total_joules == pytest.approx(10)
    with pytest.raises(ValueError):
        account([Interval("a", -1, 1, 1)])


@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 100), st.floats(0, 100)),
                max_size=20))
def test_account_conserves_energy(rows: list[tuple[float, float, float]]) -> None:
    ivs = [Interval("n", d, p, g) for d, p, g in rows]
    total = account(ivs).get("n")
    expected = sum(d * p for d, p, _ in rows)
    got = total.total_joules if total else 0.0
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-6)


def test_intervals_cut_at_power_and_green_steps() -> None:
    tr = GreenTrace((0.0, 5.0), (10.0, 0.0))
    ivs = intervals_from_timeline("a", [(0.0, 20.0), (8.0, 40.0)], 10.0, tr)
    assert [(i.duration_s, i.power_w, i.green_w) for i in ivs] == [
        (5.0, 20.0, 10.0), (3.0, 20.0, 0.0), (2.0, 40.0, 0.0)]
