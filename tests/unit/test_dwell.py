"""Visits and dwell estimation: run-length encoding, hierarchy of tables, accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.model import dwell as dw


def test_visits_from_minutes() -> None:
    m = np.array([[5, 5, 7, 7, 7, 5], [1, 1, 1, 1, 1, 1]])
    v = dw.visits_from_minutes(m)
    assert v.user.tolist() == [0, 0, 0, 1]
    assert v.place.tolist() == [5, 7, 5, 1]
    assert v.start_min.tolist() == [0, 2, 5, 0]
    assert v.dur_min.tolist() == [2, 3, 1, 6]
    assert v.dwell_s.tolist() == [120, 180, 60, 360]
    assert v.first_index().tolist() == [0, 3]


def test_relabel_merges_visits_in_one_fog_node() -> None:
    v = dw.visits_from_minutes(np.array([[0, 1, 1, 2, 3, 3], [2, 2, 3, 3, 3, 3]]))
    f = dw.relabel(v, np.array([0, 0, 1, 1]))
    assert f.place.tolist() == [0, 1, 1]
    assert f.dur_min.tolist() == [3, 3, 6]
    assert f.user.tolist() == [0, 0, 1]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=5, max_size=5), min_size=1, max_size=6))
def test_visits_cover_every_minute(rows: list[list[int]]) -> None:
    m = np.array(rows)
    v = dw.visits_from_minutes(m)
    assert np.bincount(v.user, weights=v.dur_min, minlength=len(rows)).tolist() == [5] * len(rows)
    rebuilt = np.repeat(v.place, v.dur_min).reshape(m.shape)
    assert (rebuilt == m).all()


def _visits(user: list[int], place: list[int], start: list[int], dur: list[int],
            n_users: int = 2, n_minutes: int = 1440) -> dw.Visits:
    a = [np.array(x, dtype=np.int64) for x in (user, place, start, dur)]
    return dw.Visits(a[0], a[1], a[2], a[3], n_users, n_minutes)


def test_prediction_hierarchy() -> None:
    # history: user 0 stays 60 min at place 3 around 09:00; user 1 stays 30 and 90 min there
    history = _visits([0, 1, 1, 1], [3, 3, 3, 4], [540, 545, 550, 100], [60, 30, 90, 10])
    model = dw.fit(history, n_places=5, bins_per_day=24, min_count=2)
    today = _visits([0, 0, 1, 1], [3, 3, 2, 4], [560, 1000, 600, 1430], [5, 5, 5, 10])
    got = dw.predict(model, today)
    assert got[0] == 3600  # (user 0, place 3, hour 9): own history
    assert got[1] == 3600  # (user 0, place 3) at another hour: own history still
    assert got[2] == pytest.approx(np.mean([60, 30, 90, 10]) * 60)  # unknown place: global
    assert got[3] == 600  # own history says 10 min; also the time left in the day


def test_population_level_needs_min_count() -> None:
    history = _visits([0, 0, 1], [3, 3, 4], [540, 600, 0], [60, 20, 10])
    model = dw.fit(history, n_places=5, bins_per_day=24, min_count=2)
    stranger = _visits([1], [3], [550], [1])
    assert dw.predict(model, stranger)[0] == 40 * 60  # (place 3): 2 samples, mean 40 min


def test_censored_history_visits_are_ignored() -> None:
    history = _visits([0, 0], [1, 2], [0, 1000], [1000, 440])  # the second runs to midnight
    model = dw.fit(history, n_places=3)
    assert model.global_mean_s == 1000 * 60


def test_oracle_and_accuracy() -> None:
    v = _visits([0, 0], [1, 2], [0, 10], [10, 20])
    assert dw.oracle_dwell(v).tolist() == [600, 1200]
    acc = dw.accuracy(np.array([300.0, 1200.0]), dw.oracle_dwell(v), threshold_s=500)
    assert acc.mae_s == 150
    assert acc.median_abs_rel_error == pytest.approx(0.25)
    assert acc.within_factor_2 == 1.0
    assert acc.decision_agreement == 0.5
    assert acc.as_dict()["n"] == 2
    perfect = dw.accuracy(dw.oracle_dwell(v), dw.oracle_dwell(v), threshold_s=500)
    assert (perfect.mae_s, perfect.decision_agreement) == (0.0, 1.0)
    with pytest.raises(ValueError):
        dw.accuracy(np.zeros(3), np.zeros(2))


def test_population_only_model_ignores_own_history() -> None:
    history = _visits([0, 0, 1], [3, 3, 4], [540, 600, 0], [60, 20, 10])
    model = dw.fit(history, n_places=5, personal=False)
    assert dw.predict(model, _visits([0], [3], [550], [1]))[0] == 40 * 60
    assert dw.predict(model, _visits([1], [4], [0], [1]))[0] == 30 * 60  # 1 sample: global
