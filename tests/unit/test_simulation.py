"""Simulation: hand-computed one-user traces for each policy, properties, Fig. 6a shape."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.model import mobility as mb
from orchestrator.model import simulation as sim
from orchestrator.model.dwell import fit, predict, relabel, visits_from_minutes

DAY = 1440


def one_user(*stays: tuple[int, int]) -> np.ndarray:
    """A (1, 1440) trace from (bs, minutes) stays."""
    row = np.concatenate([np.full(minutes, bs, dtype=np.int32) for bs, minutes in stays])
    assert row.size == DAY
    return row[None, :]


# home (BS 0) 60 min, away (BS 1) 600 min, home again 780 min
TRIP = one_user((0, 60), (1, 600), (0, 780))


def prepared(minutes: np.ndarray, predicted: list[float] | None = None,
             max_replicas: int = 2) -> sim.Prepared:
    v = visits_from_minutes(minutes)
    pred = v.dwell_s if predicted is None else np.array(predicted, dtype=float)
    return sim.prepare(v, pred, max_replicas=max_replicas)


def sc(policy: str, r_data: float, t_mig: float = 100.0, **kw: object) -> sim.Scenario:
    return sim.Scenario(policy, r_data, t_mig_s=t_mig, r_mig_bps=1e6, epsilon_bytes=0.0,
                        **kw)  # type: ignore[arg-type]


def test_static_pays_every_remote_byte() -> None:
    t = sim.run(prepared(TRIP), sc("static", 1e4))
    assert t.core_bytes == pytest.approx(600 * 60 * 1e4)
    assert t.migrations == 0
    assert t.remote_fraction == pytest.approx(600 / DAY)


def test_oracle_migrates_there_and_back_when_it_pays() -> None:
    # thresholds: away 36000·1e4/1.01e6 = 356 s, home 46800·1e4/1.01e6 = 463 s, both > 100 s
    t = sim.run(prepared(TRIP), sc("oracle", 1e4))
    assert t.migrations == 2
    assert t.core_bytes == pytest.approx(2 * (1e6 + 1e4) * 100)
    assert t.migration_bytes == pytest.approx(2 * 1e6 * 100)
    assert t.remote_seconds == pytest.approx(200)


def test_oracle_stays_when_threshold_is_below_tmig() -> None:
    # threshold 36000·1e3/1.001e6 = 36 s < 100 s: stay, same as static
    t = sim.run(prepared(TRIP), sc("oracle", 1e3))
    assert t.migrations == 0
    assert t.core_bytes == pytest.approx(36000 * 1e3)


def test_dynamic_follows_the_estimate_not_the_truth() -> None:
    # the estimator believes the away visit lasts 1 minute: no migration, home stays local
    t = sim.run(prepared(TRIP, [3600, 60, 46800]), sc("dynamic", 1e4))
    assert (t.migrations, t.core_bytes) == (0, pytest.approx(36000 * 1e4))


def test_dynamic_with_the_dwell_estimator_by_hand() -> None:
    """T̂_BS from the same estimator the control plane uses, fitted on yesterday.

    Yesterday = today = TRIP. Estimates: home at 00:00 → 60 min (same user, place, hour);
    away at 01:00 → 600 min; home at 11:00 → no (user, place, hour) entry, so the user's
    mean at home over complete stays = 60 min (the evening stay runs to midnight: censored).
    Away: threshold 36000·1e4/1.01e6 = 356 s > Tmig 100 s → migrate, (1e6 + 1e4)·100 B.
    Back home: threshold 3600·1e4/1.01e6 = 35.6 s < 100 s → stay remote all evening,
    46800·1e4 B — worse than static (36000·1e4 B), an error only the oracle avoids.
    """
    v = visits_from_minutes(TRIP)
    model = fit(v, n_places=2)
    assert predict(model, v).tolist() == [3600.0, 36000.0, 3600.0]
    prep = sim.prepare(v, predict(model, v), history=v)
    t = sim.run(prep, sc("dynamic", 1e4))
    assert t.migrations == 1
    assert t.core_bytes == pytest.approx((1e6 + 1e4) * 100 + 46800 * 1e4)
    assert t.remote_seconds == pytest.approx(100 + 46800)
    assert t.remote_fraction == pytest.approx(46900 / 86400)
    assert sim.run(prep, sc("static", 1e4)).core_bytes == pytest.approx(36000 * 1e4)
    assert sim.run(prep, sc("oracle", 1e4)).core_bytes == pytest.approx(2 * (1e6 + 1e4) * 100)


def test_migration_cut_short_charges_only_the_visit() -> None:
    trace = one_user((0, 60), (1, 1), (0, 1379))
    # predicted 10 h away: migrate (Tmig 100 s) but the user leaves after 60 s, then back
    t = sim.run(prepared(trace, [3600, 36000, 1379 * 60]), sc("dynamic", 1e4))
    away = 1e6 * 100 + 1e4 * 60  # stream + the 60 s of data of the visit
    back = (1e6 + 1e4) * 100
    assert t.migrations == 2
    assert t.core_bytes == pytest.approx(away + back)


def test_replicas_make_migrations_cheap() -> None:
    # top-2 by time: BS 0 and BS 1; Tmig to a replica = 100 s × 0.25 = 25 s
    # thresholds at 1e3 B/s: away 35.96 s, home 46.75 s, both > 25 s
    t = sim.run(prepared(TRIP), sc("replicas", 1e3, replicas=2, replica_delta=0.25))
    assert t.migrations == 2
    assert t.core_bytes == pytest.approx(2 * (1e6 + 1e3) * 25)
    # without replicas the same rule stays put
    assert sim.run(prepared(TRIP), sc("replicas", 1e3, replicas=0)).migrations == 0


def test_replica_migration_time_can_be_given() -> None:
    t = sim.run(prepared(TRIP), sc("replicas", 1e3, replicas=2, replica_t_mig_s=10.0))
    assert t.core_bytes == pytest.approx(2 * (1e6 + 1e3) * 10)


def test_energy_aware_rule_declines_a_migration_eq1_accepts() -> None:
    energy = sim.EnergyModel(core_j_per_byte=1e-6, host_j_per_byte=1e-6,
                             host_j_per_migration=200.0)
    # energy threshold (36000·1e4 − 2e8) / (2e6 + 1e4) = 79.6 s < 100 s: stay
    t = sim.run(prepared(TRIP), sc("energy", 1e4, energy=energy))
    assert t.migrations == 0
    assert t.energy_j == pytest.approx(36000 * 1e4 * 1e-6)
    plain = sim.run(prepared(TRIP), sc("oracle", 1e4, energy=energy))
    assert plain.migrations == 2
    assert plain.energy_j == pytest.approx(2.02e8 * 1e-6 + 2e8 * 1e-6 + 2 * 200)


def test_fog_nodes_merge_bss() -> None:
    v = relabel(visits_from_minutes(TRIP), np.array([0, 0]))  # one fog node serves both
    t = sim.run(sim.prepare(v, v.dwell_s), sc("static", 1e4))
    assert t.core_bytes == 0 and t.remote_fraction == 0


def test_bad_scenarios_are_refused() -> None:
    with pytest.raises(ValueError, match="policy"):
        sim.Scenario("teleport", 1.0)
    with pytest.raises(ValueError, match="r_mig_bps"):
        sim.Scenario("static", 1.0, r_mig_bps=0)
    with pytest.raises(ValueError, match="replicas"):
        sim.run(prepared(TRIP, max_replicas=1), sc("replicas", 1e3, replicas=2))


def test_top_places_by_time_and_arrivals() -> None:
    trace = one_user((0, 100), (1, 10), (2, 500), (1, 10), (0, 820))
    v = visits_from_minutes(trace)
    assert sim.top_places(v, 2, "time").tolist() == [[0, 2]]
    assert sim.top_places(v, 2, "arrivals").tolist() == [[0, 1]]
    assert sim.top_places(v, 4, "time").tolist() == [[0, 2, 1, -1]]


def test_location_shares_by_hand() -> None:
    trace = one_user((0, 1300), (1, 50), (2, 40), (3, 30), (4, 20))
    s = sim.location_shares(visits_from_minutes(trace))
    assert (s.percent(0.90), s.percent(0.95), s.percent(0.99)) == (100.0, 100.0, 0.0)
    assert s.percent(0.90, n=1) == 100.0 and s.percent(0.95, n=1) == 0.0
    assert s.percent(0.99, n=5) == 100.0


# ----------------------------------------------------------------------------- properties

traces = st.lists(st.tuples(st.integers(0, 3), st.integers(1, 400)), min_size=1, max_size=12)


def _trace(users: list[list[tuple[int, int]]]) -> np.ndarray:
    rows = []
    for stays in users:
        row = np.concatenate([np.full(m, b) for b, m in stays])[:DAY]
        rows.append(np.pad(row, (0, DAY - row.size), mode="edge"))
    return np.array(rows, dtype=np.int32)


@settings(max_examples=40, deadline=None)
@given(st.lists(traces, min_size=2, max_size=5), st.floats(1.0, 1e6), st.floats(1.0, 2000.0))
def test_properties(users: list[list[tuple[int, int]]], r_data: float, t_mig: float) -> None:
    minutes = _trace(users)
    whole = prepared(minutes)
    static = sim.run(whole, sc("static", r_data, t_mig))
    assert static.core_bytes == pytest.approx(static.remote_seconds * r_data)
    never = sim.run(whole, sc("dynamic", r_data, float("inf")))
    assert never.core_bytes == pytest.approx(static.core_bytes)
    for policy in ("dynamic", "oracle", "replicas", "energy"):
        t = sim.run(whole, sc(policy, r_data, t_mig, replicas=1))
        assert 0.0 <= t.remote_fraction <= 1.0
        assert t.migrations <= len(whole.visits)
        # users are independent: splitting them into chunks changes nothing
        parts = sim.accumulate([prepared(minutes[:1]), prepared(minutes[1:])],
                               [sc(policy, r_data, t_mig, replicas=1)])[0]
        assert parts.core_bytes == pytest.approx(t.core_bytes)
        assert parts.migrations == t.migrations


# ----------------------------------------------------------------------------- Fig. 6a shape


@pytest.fixture(scope="module")
def city() -> sim.Prepared:
    layout = mb.make_layout(mb.LayoutParams(n_bs=1500, width_m=15_000, height_m=15_000))
    hist = relabel(visits_from_minutes(mb.generate_chunk(layout, 1500, seed=3, day=0)),
                   layout.fog_of_bs)
    today = relabel(visits_from_minutes(mb.generate_chunk(layout, 1500, seed=3, day=1)),
                    layout.fog_of_bs)
    return sim.prepare(today, predict(fit(hist, layout.n_fog), today), history=hist)


def test_fig6a_shape(city: sim.Prepared) -> None:
    rates = [r * sim.MBIT for r in (0.25, 0.5, 1.0, 2.0, 4.0)]
    t_migs = {256: 60.0, 512: 120.0, 1024: 240.0}  # Tmig ∝ M, as in the paper
    dynamic = ("dynamic", "oracle", "replicas")
    runs = sim.fig6a_scenarios(rates, t_migs, ("static", *dynamic),
                               base=sim.Scenario("static", 0.0, replicas=2),
                               replica_t_mig_by_memory={m: t / 4 for m, t in t_migs.items()})
    got = {(m, s.policy, s.r_data_bps): sim.run(city, s).core_bytes for m, s in runs}
    for m in t_migs:
        for policy in dynamic:
            gaps = [got[(m, "static", r)] - got[(m, policy, r)] for r in rates]
            assert gaps == sorted(gaps), f"{policy}: further below static as r_data grows"
            assert all(g > 0 for g in gaps[2:]), f"{policy} below static from 1 Mb/s, M={m}"
        statics = [got[(m, "static", r)] for r in rates]
        assert statics == sorted(statics) and statics[-1] / statics[0] == pytest.approx(16)
    for policy in dynamic:  # larger VMs cost more core traffic, at every r_data
        for r in rates:
            series = [got[(m, policy, r)] for m in sorted(t_migs)]
            assert series == sorted(series) and series[0] < series[-1], (policy, r)
    for r in rates:
        statics = {got[(m, "static", r)] for m in t_migs}
        assert len(statics) == 1  # static never migrates: M does not matter


def test_sweeps_build_the_right_grid() -> None:
    base = sim.Scenario("dynamic", 1e5, t_mig_s=50)
    ks = sim.replica_sweep(base, [0, 1, 2])
    assert [(s.replicas, s.placement) for s in ks][:3] == [(0, "time"), (1, "time"), (2, "time")]
    assert len(ks) == 6 and all(s.policy == "replicas" for s in ks)
    eps = sim.epsilon_sweep(base, [0, 1e6])
    assert [(s.policy, s.epsilon_bytes) for s in eps] == [
        ("dynamic", 0), ("dynamic", 1e6), ("oracle", 0), ("oracle", 1e6)]


def test_epsilon_reduces_migrations(city: sim.Prepared) -> None:
    base = sim.Scenario("oracle", 2 * sim.MBIT, t_mig_s=60)
    counts = [sim.run(city, s).migrations for s in sim.epsilon_sweep(base, [0, 1e8, 1e9],
                                                                       ["oracle"])]
    assert counts[0] >= counts[1] >= counts[2]
    assert counts[0] > counts[2]
