"""Visits and dwell-time (T_BS) estimation: how long will the user stay where they just arrived?

Eq. 1 needs T_BS, the time a user's devices will stay behind the fog node they just
reached, at the moment they arrive, so it has to be predicted. What the simulator and the
decision engine share:

* `Visits`: a trace run-length encoded per user, one row per maximal stay at one location
  (a BS, or the fog node serving it). Dwell = the stay's length, cut at the end of the trace.
* `DwellModel`: mean dwell tables fitted on history (e.g. yesterday), looked up from the
  most specific level with enough samples: (user, place, hour) → (user, place) →
  (place, hour) → (place) → (hour) → everyone. The mean, not the median, because Eq. 1
  compares expected bytes, which are linear in the dwell. The prediction is capped by the
  time left in the trace, which is known.
* `oracle_dwell`: the true dwell, for an upper bound on what an estimator can achieve.
* `accuracy`: errors in seconds and, what matters for Eq. 1, how often the estimate is on
  the same side of a migration threshold as the truth.

All pure and vectorised over visits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
SECONDS_PER_MINUTE = 60.0


@dataclass(frozen=True)
class Visits:
    """Maximal stays, sorted by user then start; minutes since the trace began."""

    user: IntArray  # 0 … n_users−1 within the trace or chunk
    place: IntArray
    start_min: IntArray
    dur_min: IntArray
    n_users: int
    n_minutes: int

    def __len__(self) -> int:
        return int(self.user.shape[0])

    @property
    def dwell_s(self) -> FloatArray:
        return self.dur_min.astype(np.float64) * SECONDS_PER_MINUTE

    def first_index(self) -> IntArray:
        """Index of each user's first visit (every user has at least one)."""
        return np.searchsorted(self.user, np.arange(self.n_users)).astype(np.int64)


def visits_from_minutes(places: npt.NDArray[np.integer]) -> Visits:
    """Run-length encode an (users, minutes) array of places into visits."""
    n_users, n_minutes = places.shape
    if n_minutes == 0:
        raise ValueError("a trace needs at least one minute")
    change = np.ones((n_users, n_minutes), dtype=np.bool_)
    change[:, 1:] = places[:, 1:] != places[:, :-1]
    user, start = np.nonzero(change)
    end = np.empty_like(start)
    end[:-1] = np.where(user[1:] == user[:-1], start[1:], n_minutes)
    if len(end):
        end[-1] = n_minutes
    return Visits(user.astype(np.int64), places[user, start].astype(np.int64),
                  start.astype(np.int64), (end - start).astype(np.int64), n_users, n_minutes)


def relabel(visits: Visits, mapping: npt.NDArray[np.integer]) -> Visits:
    """Map places (e.g. BS → fog node) and merge consecutive visits that become equal."""
    place = np.asarray(mapping)[visits.place].astype(np.int64)
    keep = np.ones(len(visits), dtype=np.bool_)
    keep[1:] = (place[1:] != place[:-1]) | (visits.user[1:] != visits.user[:-1])
    idx = np.flatnonzero(keep)
    dur = np.add.reduceat(visits.dur_min, idx) if len(idx) else visits.dur_min[:0]
    return Visits(visits.user[idx], place[idx], visits.start_min[idx], dur.astype(np.int64),
                  visits.n_users, visits.n_minutes)


# ----------------------------------------------------------------------------- estimator


@dataclass(frozen=True)
class _Table:
    """Mean dwell per integer key, sorted for searchsorted lookups."""

    keys: IntArray
    mean_s: FloatArray
    count: IntArray

    @staticmethod
    def fit(keys: IntArray, dwell_s: FloatArray) -> _Table:
        uniq, inverse = np.unique(keys, return_inverse=True)
        count = np.bincount(inverse, minlength=len(uniq))
        total = np.bincount(inverse, weights=dwell_s, minlength=len(uniq))
        return _Table(uniq.astype(np.int64), total / np.maximum(count, 1), count.astype(np.int64))

    def lookup(self, keys: IntArray) -> tuple[FloatArray, IntArray]:
        """(mean, count) per key; count 0 where the key was never seen."""
        if len(self.keys) == 0:
            return np.zeros(len(keys)), np.zeros(len(keys), dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        hit = self.keys[pos] == keys
        return np.where(hit, self.mean_s[pos], 0.0), np.where(hit, self.count[pos], 0)


@dataclass(frozen=True)
class DwellModel:
    """Hierarchical mean-dwell tables, most specific first (see the module docstring)."""

    levels: tuple[_Table, ...]
    global_mean_s: float
    n_places: int
    bins_per_day: int
    min_count: int


def _keys(visits: Visits, n_places: int, bins: int) -> tuple[IntArray, ...]:
    hour = (visits.start_min % 1440) * bins // 1440
    up = visits.user * n_places + visits.place
    return (up * bins + hour, up, visits.place * bins + hour, visits.place, hour)


def fit(history: Visits, n_places: int, bins_per_day: int = 24, min_count: int = 2,
        personal: bool = True) -> DwellModel:
    """Fit dwell tables on history visits (same user numbering as the visits to predict).

    Visits cut by the end of the history trace are left out: their dwell is unknown.
    `personal=False` keeps only the population levels (for history from other users).
    """
    complete = history.start_min + history.dur_min < history.n_minutes
    sub = Visits(history.user[complete], history.place[complete], history.start_min[complete],
                 history.dur_min[complete], history.n_users, history.n_minutes)
    dwell = sub.dwell_s
    none = _Table.fit(np.zeros(0, dtype=np.int64), np.zeros(0))
    levels = tuple(_Table.fit(k, dwell) if personal or level >= 2 else none
                   for level, k in enumerate(_keys(sub, n_places, bins_per_day)))
    mean = float(dwell.mean()) if len(dwell) else 0.0
    return DwellModel(levels, mean, n_places, bins_per_day, min_count)


def predict(model: DwellModel, visits: Visits) -> FloatArray:
    """Predicted dwell in seconds for each visit, from the first level that knows it."""
    out = np.full(len(visits), model.global_mean_s)
    decided = np.zeros(len(visits), dtype=np.bool_)
    for level, (table, keys) in enumerate(zip(model.levels,
                                             _keys(visits, model.n_places, model.bins_per_day),
                                             strict=True)):
        mean, count = table.lookup(keys)
        need = 1 if level < 2 else model.min_count  # a user's own history counts at once
        use = ~decided & (count >= need)
        out[use] = mean[use]
        decided |= use
    remaining = (visits.n_minutes - visits.start_min) * SECONDS_PER_MINUTE
    capped: FloatArray = np.minimum(out, remaining)
    return capped


def oracle_dwell(visits: Visits) -> FloatArray:
    """The true dwell in seconds (what an estimator with perfect foresight would say)."""
    return visits.dwell_s


@dataclass(frozen=True)
class DwellAccuracy:
    """How good the estimate is, overall and for the decision it feeds."""

    n: int
    mae_s: float
    median_abs_rel_error: float
    within_factor_2: float  # share of visits with estimate/truth in [½, 2]
    threshold_s: float | None
    decision_agreement: float | None  # share on the same side of threshold_s as the truth

    def as_dict(self) -> dict[str, float | int | None]:
        return dict(self.__dict__)


def accuracy(predicted_s: FloatArray, true_s: FloatArray,
             threshold_s: float | None = None) -> DwellAccuracy:
    """Compare estimates with the truth (both in seconds)."""
    if predicted_s.shape != true_s.shape:
        raise ValueError("predicted and true dwell arrays differ in shape")
    n = int(true_s.shape[0])
    if n == 0:
        return DwellAccuracy(0, 0.0, 0.0, 1.0, threshold_s, None if threshold_s is None else 1.0)
    err = np.abs(predicted_s - true_s)
    safe_true = np.maximum(true_s, 1e-9)
    ratio = np.maximum(predicted_s, 1e-9) / safe_true
    agree = None
    if threshold_s is not None:
        agree = float(np.mean((predicted_s > threshold_s) == (true_s > threshold_s)))
    return DwellAccuracy(n, float(err.mean()), float(np.median(err / safe_true)),
                         float(np.mean((ratio >= 0.5) & (ratio <= 2.0))), threshold_s, agree)
