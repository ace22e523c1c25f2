"""Decision engine: Eq. 1 on roams, decompose/compose, replicas, green choice, static."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.model import dwell
from orchestrator.model.controller import (
    ConstantDwell,
    Controller,
    ControlParams,
    ModelDwell,
    TmigCache,
)
from orchestrator.model.decision import migration_threshold_s
from orchestrator.model.mme import BaseStation, LocationUpdate, Mme
from orchestrator.model.precopy import MigrationInputs, predict

MIB = 2**20


def engine(policy: str = "dynamic", dwell_s: float = 600.0, r_data: float = 1e6,
           **kw: object) -> Controller:
    mme = Mme.from_maps({"b1": "fog1", "b2": "fog2", "b3": "fog3"},
                        {"hr": "alice", "gps": "alice", "cam": "bob"})
    params = ControlParams(policy=policy, r_data_bps=r_data, r_mig_bps=10e6,
                           epsilon_bytes=1e5, **kw)  # type: ignore[arg-type]
    return Controller(params, TmigCache(), ConstantDwell(dwell_s), mme, clock=lambda: 0.0)


def step(c: Controller, dev: str, bs: str, t: float, members: tuple[str, ...] = ()) -> list:
    return c.on_roams(c.mme.update(LocationUpdate(dev, bs, t, members)))


def kinds(actions: list) -> list[str]:
    return [a.kind for a in actions]


def test_first_sighting_places_the_proxy() -> None:
    c = engine()
    [a] = step(c, "hr", "b1", 0, ("gps",))
    assert (a.kind, a.destination, set(a.devices)) == ("place", "fog1", {"hr", "gps"})
    assert c.proxies["alice"][0].node == "fog1"


def test_whole_user_roam_migrates_when_eq1_says_so() -> None:
    c = engine(dwell_s=600.0, r_data=1e6)
    step(c, "hr", "b1", 0, ("gps",))
    [a] = step(c, "hr", "b2", 10, ("gps",))
    assert a.kind == "migrate" and (a.source, a.destination) == ("fog1", "fog2")
    d = a.decision
    assert d is not None and d.migrate and d.r_data_bps == 2e6
    t = predict(MigrationInputs(128 * MIB, 0.0, 10e6)).total_time_s
    assert d.t_mig_s == pytest.approx(t)
    assert d.threshold_s == pytest.approx(migration_threshold_s(600.0, 2e6, 10e6, 1e5))
    assert c.proxies["alice"][0].node == "fog2"
    ev = a.as_event()
    assert ev["verdict"] == "migrate" and "threshold_s" in ev and ev["memory_bytes"] == 128 * MIB


def test_short_dwell_or_low_rate_stays() -> None:
    for c in (engine(dwell_s=1.0), engine(r_data=10.0)):
        step(c, "hr", "b1", 0, ("gps",))
        [a] = step(c, "hr", "b2", 10, ("gps",))
        assert a.kind == "stay" and a.decision is not None and not a.decision.migrate
        assert c.proxies["alice"][0].node == "fog1"


def test_static_policy_never_moves_but_logs_eq1() -> None:
    c = engine("static")
    step(c, "hr", "b1", 0, ("gps",))
    [a] = step(c, "hr", "b2", 10, ("gps",))
    assert a.kind == "stay" and a.inputs["reason"] == "static policy"
    assert a.decision is not None and a.decision.migrate  # dynamic would have moved
    assert c.proxies["alice"][0].node == "fog1"


def test_decompose_then_compose() -> None:
    c = engine(mobile_memory_bytes=96 * MIB)
    step(c, "hr", "b1", 0, ("gps",))
    [a] = step(c, "gps", "b2", 10)
    assert a.kind == "decompose" and a.devices == ("gps",) and a.into == "px-alice-m"
    main, mobile = c.proxies["alice"]
    assert (main.part, main.devices, main.node) == ("static", {"hr"}, "fog1")
    assert (mobile.part, mobile.devices, mobile.node) == ("mobile", {"gps"}, "fog2")
    # the mobile proxy follows its devices on its own
    [a] = step(c, "gps", "b3", 20)
    assert a.kind == "migrate" and a.proxy == "px-alice-m" and a.destination == "fog3"
    # back home: the two become one
    acts = step(c, "gps", "b1", 30)
    assert kinds(acts) == ["reassign", "compose"]
    [whole] = c.proxies["alice"]
    assert (whole.part, whole.devices, whole.node) == ("whole", {"hr", "gps"}, "fog1")


def test_static_part_joining_mobile_proxy_composes() -> None:
    c = engine()
    step(c, "hr", "b1", 0, ("gps",))
    step(c, "gps", "b2", 10)
    acts = step(c, "hr", "b2", 20)
    assert kinds(acts) == ["reassign", "compose"]
    [whole] = c.proxies["alice"]
    assert (whole.name, whole.node, whole.part) == ("px-alice-m", "fog2", "whole")


def test_no_decompose_when_disabled() -> None:
    c = engine(decompose=False)
    step(c, "hr", "b1", 0, ("gps",))
    [a] = step(c, "gps", "b2", 10)
    assert a.kind == "stay" and a.inputs["reason"] == "devices split across nodes"


def test_replicas_shorten_tmig() -> None:
    common = {"static_part_bytes": 64 * MIB, "overlay_bytes": 1 * MIB}
    plain, rep = engine("dynamic", **common), engine("dynamic+replicas", **common)
    rep.set_replicas("alice", ["fog1", "fog2"])
    out = []
    for c in (plain, rep):
        step(c, "hr", "b1", 0, ("gps",))
        [a] = step(c, "hr", "b2", 10, ("gps",))
        out.append(a)
    assert out[1].inputs["replica"] and not out[0].inputs["replica"]
    assert out[0].decision.t_mig_s - out[1].decision.t_mig_s == pytest.approx(
        63 * MIB / (10e6 * 0.95), rel=1e-6)


def test_green_picks_colocated_node() -> None:
    c = engine()
    c.mme.add_bs(BaseStation("b4", "fog4", ("fog5",)))
    c.green = lambda node, t: {"fog4": 1.0, "fog5": 50.0}[node]
    step(c, "hr", "b1", 0, ("gps",))
    [a] = step(c, "hr", "b4", 10, ("gps",))
    assert a.destination == "fog5"


def test_same_node_bs_change_and_unknown_failures() -> None:
    c = engine()
    c.mme.add_bs(BaseStation("b1b", "fog1"))
    step(c, "hr", "b1", 0, ("gps",))
    assert step(c, "hr", "b1b", 5, ("gps",)) == []
    [a] = step(c, "hr", "b2", 10, ("gps",))
    c.failed(a)
    assert c.proxies["alice"][0].node == "fog1"


def test_failed_decompose_is_undone() -> None:
    c = engine()
    step(c, "hr", "b1", 0, ("gps",))
    [dec] = step(c, "gps", "b2", 10)
    c.failed(dec)  # the mobile VM never served: the proxy is whole again
    [whole] = c.proxies["alice"]
    assert (whole.part, whole.devices, whole.node) == ("whole", {"hr", "gps"}, "fog1")


def test_failed_reassign_is_undone() -> None:
    mme = Mme.from_maps({"b1": "fog1", "b2": "fog2"}, {"hr": "alice", "gps": "alice",
                                                       "pad": "alice"})
    c = Controller(ControlParams(r_data_bps=1e6, r_mig_bps=10e6, epsilon_bytes=1e5),
                   TmigCache(), ConstantDwell(600.0), mme, clock=lambda: 0.0)
    step(c, "hr", "b1", 0, ("gps", "pad"))
    step(c, "gps", "b2", 10)
    [re] = step(c, "pad", "b2", 20)  # joins the mobile part; hr keeps the static part
    assert (re.kind, re.proxy, re.into) == ("reassign", "px-alice", "px-alice-m")
    c.failed(re)
    main, mobile = c.proxies["alice"]
    assert (main.devices, mobile.devices) == ({"hr", "pad"}, {"gps"})


def test_tmig_cache_non_converging_is_inf() -> None:
    cache = TmigCache()
    assert cache.t_mig_s(1024 * MIB, 1e6, dirty_rate_pages_s=1e6) == math.inf
    a = cache.t_mig_s(128 * MIB, 1e7)
    assert cache.t_mig_s(128 * MIB, 1e7) == a and len(cache._cache) == 2


def test_model_dwell_compresses_time_and_caches() -> None:
    hist = dwell.visits_from_minutes(np.array([[0] * 30 + [1] * 10 + [0] * 30 + [1] * 10]))
    model = dwell.fit(hist, n_places=2, min_count=1)
    est = ModelDwell(model, {"alice": 0}, {"fog1": 0, "fog2": 1}, minute_s=1.0)
    assert est.estimate_s("alice", "fog2", 30.0) == pytest.approx(10.0)  # 10 minutes → 10 s
    assert est.estimate_s("nobody", "fog9", 0.0) == pytest.approx(model.global_mean_s / 60)
    capped = ModelDwell(model, {"alice": 0}, {"fog1": 0, "fog2": 1}, 1.0, n_minutes=35)
    assert capped.estimate_s("alice", "fog2", 30.0) == pytest.approx(5.0)


def test_params_validated() -> None:
    with pytest.raises(ValueError):
        ControlParams(policy="nope")
    with pytest.raises(ValueError):
        ControlParams(r_mig_bps=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["hr", "gps"]), st.sampled_from(["b1", "b2", "b3"])),
                min_size=1, max_size=30), st.sampled_from(["static", "dynamic"]))
def test_invariants_over_random_walks(walk: list[tuple[str, str]], policy: str) -> None:
    """Every device is served by exactly one proxy; at most two proxies; the engine's
    migrations agree with Eq. 1; static never moves."""
    c = engine(policy)
    first_node = None
    for t, (dev, bs) in enumerate(walk):
        for a in step(c, dev, bs, float(t)):
            if a.kind == "migrate":
                assert a.decision is not None and a.decision.migrate
            if a.kind == "place":
                first_node = a.destination
        ps = c.proxies.get("alice", [])
        assert len(ps) <= 2
        served = [d for p in ps for d in p.devices]
        assert sorted(served) == sorted(set(served)) == (sorted({"hr", "gps"}) if ps else [])
        if policy == "static" and ps:
            assert [p.node for p in ps] == [first_node]
