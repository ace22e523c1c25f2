"""Synthetic mobility traces over a base-station layout: one BS per user per minute.

Why synthetic: the paper's trace (13,000 users, 5,962 BSs, one location a minute for a day)
is not public. The generator stands on two published models so its output has the
regularities the simulator depends on (few dominant places, heavy-tailed stays, rare long
jumps):

* Periodic and social mobility (Cho, Myers & Leskovec, KDD 2011): most of a day alternates
  between a home and a work anchor at Gaussian-distributed times of day; some trips go to
  friends' homes, and friendship decays with distance (a friend is the nearest of a few
  random users).
* Exploration and preferential return (Song, Koren, Wang & Barabási, Nat. Phys. 2010):
  every other trip either explores a new place with probability ρ·S^−γ (S places known so
  far) at a jump length drawn from P(Δr) ∝ (Δr + Δr₀)^−(1+β)·e^(−Δr/κ) (González et al.
  2008), or returns to a known place chosen in proportion to its past visits; stays follow
  P(Δt) ∝ Δt^−(1+β_t)·e^(−Δt/τ).

A day is a fixed template of slots (home, commute, work with excursions, commute back,
evening excursions from home, home) whose unused slots last zero minutes; so everything is
vectorised over users, with short loops over slots only. Users are generated in chunks:
anchors (home, work, friends, favourite places, activity) are seeded by (seed, first user
of the chunk) and the day by (seed, first user, day), so day 0 can serve as a user's history
for day 1. Output is deterministic for a given (seed, chunk size).

The defaults of `MobilityParams` marked "fitted" were chosen by a grid search (activity
mean and shape, worker share, transit spacing, longest stay) on 13,000 users so that the
share of users spending >= 90/95/99 % of the day at <= 4 BSs matches the paper's Fig. 6b
(92.22 / 86.93 / 75.65 %); the others are the published values cited above.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MINUTES_PER_DAY = 1440
IntArray = npt.NDArray[np.int64]
BsArray = npt.NDArray[np.int32]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


# ----------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class LayoutParams:
    """A city-sized plane with BSs dense in a few centres and sparse in between."""

    n_bs: int = 5962
    width_m: float = 30_000.0
    height_m: float = 30_000.0
    n_clusters: int = 14
    clustered_share: float = 0.75
    cluster_sigma_m: tuple[float, float] = (700.0, 2_500.0)
    n_fog: int | None = None  # None: one fog node per BS, as in the paper's simulation
    cell_m: float = 100.0  # resolution of the nearest-BS lookup grid
    seed: int = 0


@dataclass(frozen=True)
class Layout:
    """BS positions, the fog node serving each BS, and a nearest-BS lookup grid."""

    xy_m: FloatArray  # (n_bs, 2)
    fog_of_bs: BsArray  # (n_bs,)
    width_m: float
    height_m: float
    cell_m: float
    nearest_bs: BsArray  # (rows, cols): BS closest to each cell's centre

    @property
    def n_bs(self) -> int:
        return int(self.xy_m.shape[0])

    @property
    def n_fog(self) -> int:
        return int(self.fog_of_bs.max()) + 1 if self.n_bs else 0

    def snap(self, x: FloatArray, y: FloatArray) -> BsArray:
        """The BS serving each point (nearest, up to the lookup grid's resolution)."""
        rows, cols = self.nearest_bs.shape
        r = np.clip((y / self.cell_m).astype(np.int64), 0, rows - 1)
        c = np.clip((x / self.cell_m).astype(np.int64), 0, cols - 1)
        return self.nearest_bs[r, c]


def make_layout(params: LayoutParams = LayoutParams()) -> Layout:
    """Clustered BS positions, fog nodes by k-means, and the nearest-BS grid."""
    if params.n_bs < 1:
        raise ValueError(f"n_bs must be >= 1, got {params.n_bs}")
    rng = np.random.default_rng([params.seed, 0x1A7])
    xy = _bs_positions(params, rng)
    n_fog = params.n_bs if params.n_fog is None else params.n_fog
    if not 1 <= n_fog <= params.n_bs:
        raise ValueError(f"n_fog must be between 1 and n_bs={params.n_bs}, got {n_fog}")
    fog = (np.arange(params.n_bs, dtype=np.int32) if n_fog == params.n_bs
           else _kmeans_labels(xy, n_fog, rng))
    grid = _nearest_grid(xy, params.width_m, params.height_m, params.cell_m)
    return Layout(xy, fog, params.width_m, params.height_m, params.cell_m, grid)


def layout_from_arrays(xy_m: FloatArray, fog_of_bs: BsArray, cell_m: float = 100.0) -> Layout:
    """A layout from known BS positions (e.g. read from a CSV) and their fog nodes."""
    xy = np.asarray(xy_m, dtype=np.float64)
    xy = xy - xy.min(axis=0) if len(xy) else xy.reshape(0, 2)
    width = float(xy[:, 0].max()) + cell_m if len(xy) else cell_m
    height = float(xy[:, 1].max()) + cell_m if len(xy) else cell_m
    grid = _nearest_grid(xy, width, height, cell_m)
    return Layout(xy, np.asarray(fog_of_bs, dtype=np.int32), width, height, cell_m, grid)


def _bs_positions(p: LayoutParams, rng: np.random.Generator) -> FloatArray:
    n_clustered = int(round(p.n_bs * p.clustered_share))
    centres = rng.uniform(0.15, 0.85, size=(p.n_clusters, 2)) * (p.width_m, p.height_m)
    weights = rng.pareto(1.5, p.n_clusters) + 1.0  # a downtown, some towns, villages
    which = rng.choice(p.n_clusters, size=n_clustered, p=weights / weights.sum())
    sigma = rng.uniform(*p.cluster_sigma_m, size=p.n_clusters)[which]
    clustered = centres[which] + rng.normal(size=(n_clustered, 2)) * sigma[:, None]
    spread = rng.uniform(size=(p.n_bs - n_clustered, 2)) * (p.width_m, p.height_m)
    xy = np.concatenate([clustered, spread])
    xy[:, 0] = np.clip(xy[:, 0], 0.0, p.width_m - 1e-6)
    xy[:, 1] = np.clip(xy[:, 1], 0.0, p.height_m - 1e-6)
    return xy


def _kmeans_labels(xy: FloatArray, k: int, rng: np.random.Generator, iters: int = 10) -> BsArray:
    """Lloyd's k-means: each fog node serves a compact group of nearby BSs."""
    centres = xy[rng.choice(len(xy), size=k, replace=False)]
    labels = np.zeros(len(xy), dtype=np.int32)
    for _ in range(iters):
        d2 = ((xy[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
        labels = d2.argmin(axis=1).astype(np.int32)
        counts = np.bincount(labels, minlength=k)
        for axis in (0, 1):
            sums = np.bincount(labels, weights=xy[:, axis], minlength=k)
            centres[:, axis] = np.where(counts > 0, sums / np.maximum(counts, 1), centres[:, axis])
    _, dense = np.unique(labels, return_inverse=True)  # drop fog nodes that lost all BSs
    return dense.astype(np.int32)


def _nearest_grid(xy: FloatArray, width: float, height: float, cell: float) -> BsArray:
    """Nearest BS for every grid cell by jump flooding (Rong & Tan 2006), O(cells·log)."""
    cols, rows = max(1, int(np.ceil(width / cell))), max(1, int(np.ceil(height / cell)))
    owner = np.full((rows, cols), -1, dtype=np.int32)
    if len(xy) == 0:
        return owner
    r = np.clip((xy[:, 1] / cell).astype(np.int64), 0, rows - 1)
    c = np.clip((xy[:, 0] / cell).astype(np.int64), 0, cols - 1)
    owner[r, c] = np.arange(len(xy), dtype=np.int32)
    cy, cx = np.meshgrid((np.arange(rows) + 0.5) * cell, (np.arange(cols) + 0.5) * cell,
                         indexing="ij")
    best = _dist2(owner, xy, cx, cy)
    step = 1 << int(np.ceil(np.log2(max(rows, cols))))
    for s in [*_halvings(step), 1]:
        for dy in (-s, 0, s):
            for dx in (-s, 0, s):
                if dx or dy:
                    cand = _shifted(owner, dy, dx)
                    d2 = _dist2(cand, xy, cx, cy)
                    better = d2 < best
                    owner[better], best[better] = cand[better], d2[better]
    return owner


def _halvings(step: int) -> list[int]:
    out = []
    while step >= 1:
        out.append(step)
        step //= 2
    return out


def _shifted(a: BsArray, dy: int, dx: int) -> BsArray:
    out = np.full_like(a, -1)
    rows, cols = a.shape
    if abs(dy) >= rows or abs(dx) >= cols:
        return out
    src = a[max(0, dy):rows + min(0, dy), max(0, dx):cols + min(0, dx)]
    out[max(0, -dy):rows + min(0, -dy), max(0, -dx):cols + min(0, -dx)] = src
    return out


def _dist2(owner: BsArray, xy: FloatArray, cx: FloatArray, cy: FloatArray) -> FloatArray:
    px, py = xy[owner, 0], xy[owner, 1]
    d2 = (px - cx) ** 2 + (py - cy) ** 2
    return np.where(owner >= 0, d2, np.inf)


# ----------------------------------------------------------------------------- people


@dataclass(frozen=True)
class MobilityParams:
    """Parameters of the generator; see the module docstring for their sources."""

    worker_share: float = 0.7  # fitted: users with a work anchor (others stay around home)
    leave_mean_min: float = 7.75 * 60  # Cho et al.: home→work transition ~ N(μ, σ)
    leave_sd_min: float = 60.0
    work_mean_min: float = 8.5 * 60
    work_sd_min: float = 90.0
    speed_m_min: float = 400.0  # 24 km/h door to door in a city
    transit_spacing_m: float = 1_500.0  # fitted: one observed BS per this much of a commute
    max_transit: int = 4
    jump_r0_m: float = 1_500.0  # González et al. 2008: Δr₀ = 1.5 km, β = 0.75
    jump_beta: float = 0.75
    jump_cutoff_m: float = 10_000.0  # κ, shortened to a city
    commute_cutoff_m: float = 6_000.0
    rho: float = 0.6  # Song et al. 2010: ρ = 0.6, γ = 0.21
    gamma: float = 0.21
    activity_mean: float = 5.5  # fitted: excursions per day, Poisson with Gamma(shape) rate
    activity_shape: float = 0.12  # fitted: most users make few trips, a few make many
    day_share: float = 0.4  # excursions made from the work anchor (lunch, errands)
    max_day_excursions: int = 10
    max_evening_excursions: int = 6
    stay_min_min: float = 10.0  # Song et al.: β_t = 0.8, τ = 17 h
    stay_beta: float = 0.8
    stay_cutoff_min: float = 17 * 60.0
    stay_max_min: float = 6 * 60.0
    social_share: float = 0.2  # Cho et al.: social ties explain 10–30 % of movement
    n_friends: int = 2
    n_favourites: int = 4  # places known from before today, with Zipf-like visit counts


@dataclass(frozen=True)
class Anchors:
    """What a user brings to every day: home, work, friends' homes, favourite places."""

    home: BsArray
    work: BsArray  # == home for users without a work anchor
    worker: BoolArray
    friends: BsArray  # (users, n_friends)
    favourites: BsArray  # (users, n_favourites)
    activity: FloatArray  # expected excursions per day


def make_anchors(layout: Layout, n_users: int, params: MobilityParams,
                 rng: np.random.Generator) -> Anchors:
    """Draw each user's anchors: home ∝ BS density, work and favourites by EPR jumps."""
    home = rng.integers(0, layout.n_bs, size=n_users).astype(np.int32)
    worker = rng.uniform(size=n_users) < params.worker_share
    work = _jump_from(layout, home, params.jump_r0_m, params.jump_beta,
                      params.commute_cutoff_m, rng)
    work = np.where(worker, work, home).astype(np.int32)
    favourites = np.stack([_jump_from(layout, home, params.jump_r0_m, params.jump_beta,
                                      params.jump_cutoff_m, rng)
                           for _ in range(params.n_favourites)], axis=1)
    friends = np.stack([_friend_homes(layout, home, rng) for _ in range(params.n_friends)],
                       axis=1)
    rate = rng.gamma(params.activity_shape, params.activity_mean / params.activity_shape,
                     size=n_users)
    return Anchors(home, work, worker, friends.astype(np.int32),
                   favourites.astype(np.int32), rate)


def _friend_homes(layout: Layout, home: BsArray, rng: np.random.Generator,
                  candidates: int = 6) -> BsArray:
    """A friend is the nearest of a few random users: ties decay with distance (Cho)."""
    n = len(home)
    pick = rng.integers(0, n, size=(n, candidates))
    cand = home[pick]
    d2 = ((layout.xy_m[cand] - layout.xy_m[home][:, None, :]) ** 2).sum(axis=2)
    d2[pick == np.arange(n)[:, None]] = np.inf  # not oneself
    best = cand[np.arange(n), d2.argmin(axis=1)]
    return np.asarray(best, dtype=np.int32)


def _truncated_power_law(rng: np.random.Generator, size: int | tuple[int, ...], x0: float,
                         beta: float, cutoff: float, lo: float, hi: float) -> FloatArray:
    """Samples of P(x) ∝ (x + x0)^−(1+β)·e^(−x/cutoff) on [lo, hi], by a tabulated CDF."""
    grid = np.linspace(lo, hi, 4096)
    pdf = (grid + x0) ** (-1.0 - beta) * np.exp(-grid / cutoff)
    cdf = np.concatenate([[0.0], np.cumsum((pdf[1:] + pdf[:-1]) / 2)])
    cdf /= cdf[-1]
    return np.interp(rng.uniform(size=size), cdf, grid)


def _jump_from(layout: Layout, origin: BsArray, r0: float, beta: float, cutoff: float,
               rng: np.random.Generator) -> BsArray:
    """A BS at a power-law distance in a uniform direction from each origin BS."""
    n = len(origin)
    r = _truncated_power_law(rng, n, r0, beta, cutoff, 0.0, 4 * cutoff)
    theta = rng.uniform(0.0, 2 * np.pi, size=n)
    x = _reflect(layout.xy_m[origin, 0] + r * np.cos(theta), layout.width_m)
    y = _reflect(layout.xy_m[origin, 1] + r * np.sin(theta), layout.height_m)
    return layout.snap(x, y)


def _reflect(v: FloatArray, size: float) -> FloatArray:
    v = np.abs(v)
    return np.clip(size - np.abs(size - v), 0.0, size)


# ----------------------------------------------------------------------------- one day


@dataclass
class _Visited:
    """Per-user places known so far (for preferential return), as fixed-width arrays."""

    place: BsArray  # (users, capacity), −1 when empty
    count: FloatArray
    known: FloatArray  # S of Song et al.: distinct places known


def make_day(layout: Layout, anchors: Anchors, params: MobilityParams,
             rng: np.random.Generator, minutes: int = MINUTES_PER_DAY) -> BsArray:
    """The BS of every user in every minute of one day: an (users, minutes) int32 array."""
    durations, places = _day_plan(layout, anchors, params, rng)
    return fill_minutes(places, durations, minutes)


def fill_minutes(places: BsArray, durations: FloatArray, minutes: int) -> BsArray:
    """Expand per-user slot sequences (place, duration in minutes) to one place a minute.

    Slot boundaries are the rounded cumulative durations, so rounding never accumulates;
    zero-length slots vanish and whatever overflows the day is cut off.
    """
    n_users, n_slots = places.shape
    ends = np.rint(np.cumsum(durations, axis=1))
    starts = np.concatenate([np.zeros((n_users, 1)), ends[:, :-1]], axis=1)
    starts = np.clip(starts, 0, minutes).astype(np.int64)
    marks = np.zeros((n_users, minutes + 1), dtype=np.int16)
    np.add.at(marks, (np.repeat(np.arange(n_users), n_slots), starts.ravel()), 1)
    slot = np.cumsum(marks[:, :minutes], axis=1, dtype=np.int16) - 1
    return np.take_along_axis(places, slot.astype(np.int64), axis=1).astype(np.int32)


def _day_plan(layout: Layout, a: Anchors, p: MobilityParams,
              rng: np.random.Generator) -> tuple[FloatArray, BsArray]:
    """Slot durations (minutes) and places of the day template, for every user."""
    n = len(a.home)
    leave = np.clip(rng.normal(p.leave_mean_min, p.leave_sd_min, n), 5 * 60, 11 * 60)
    work_len = np.clip(rng.normal(p.work_mean_min, p.work_sd_min, n), 4 * 60, 11 * 60)
    dist = np.hypot(*(layout.xy_m[a.work] - layout.xy_m[a.home]).T)
    travel = np.minimum(dist / p.speed_m_min, 120.0)
    n_transit = np.minimum(p.max_transit, (dist // p.transit_spacing_m)).astype(np.int64)
    work_len = work_len + np.where(n_transit == 0, travel, 0.0)  # unseen commute: at anchors
    back = leave + 2 * travel + work_len
    evening_len = np.maximum(0.0, MINUTES_PER_DAY - 60 - back)
    n_exc = rng.poisson(a.activity)
    n_day = np.minimum(rng.binomial(n_exc, p.day_share), p.max_day_excursions)
    n_eve = np.minimum(n_exc - n_day, p.max_evening_excursions)
    visited = _initial_visited(a, p)
    day_d, day_pl = _period(layout, a, p, rng, a.work, work_len, n_day,
                            p.max_day_excursions, visited)
    eve_d, eve_pl = _period(layout, a, p, rng, a.home, evening_len, n_eve,
                            p.max_evening_excursions, visited)
    out_d, out_pl = _transit(layout, a.home, a.work, travel, n_transit, p.max_transit)
    in_d, in_pl = _transit(layout, a.work, a.home, travel, n_transit, p.max_transit)
    col = np.ones((n, 1))
    durations = np.concatenate([leave[:, None], out_d, day_d, in_d, eve_d, col], axis=1)
    places = np.concatenate([a.home[:, None], out_pl, day_pl, in_pl, eve_pl,
                             a.home[:, None]], axis=1)
    durations[:, -1] = MINUTES_PER_DAY  # the last slot runs to midnight
    return durations, places.astype(np.int32)


def _transit(layout: Layout, src: BsArray, dst: BsArray, travel: FloatArray,
             n_transit: IntArray, slots: int) -> tuple[FloatArray, BsArray]:
    """BSs seen along the straight path, evenly spaced in time; unused slots last 0."""
    idx = np.arange(slots)[None, :]
    used = idx < n_transit[:, None]
    frac = (idx + 1) / (n_transit[:, None] + 1.0)
    pts = layout.xy_m[src][:, None, :] + frac[..., None] * (layout.xy_m[dst] - layout.xy_m[src])[
        :, None, :]
    places = layout.snap(pts[..., 0], pts[..., 1])
    dur = np.where(used, travel[:, None] / np.maximum(n_transit[:, None], 1), 0.0)
    return dur, np.where(used, places, src[:, None]).astype(np.int32)


def _period(layout: Layout, a: Anchors, p: MobilityParams, rng: np.random.Generator,
            base: BsArray, length: FloatArray, n_exc: IntArray, slots: int,
            visited: _Visited) -> tuple[FloatArray, BsArray]:
    """`slots` (base, excursion) pairs then a final base slot, filling `length` minutes."""
    n = len(base)
    used = np.arange(slots)[None, :] < n_exc[:, None]
    stay = _truncated_power_law(rng, (n, slots), 0.0, p.stay_beta, p.stay_cutoff_min,
                                p.stay_min_min, p.stay_max_min)
    stay = np.where(used, stay, 0.0)
    total = stay.sum(axis=1)
    scale = np.where(total > 0.8 * length, 0.8 * length / np.maximum(total, 1e-9), 1.0)
    stay *= scale[:, None]
    cuts = np.sort(rng.uniform(size=(n, slots)), axis=1)
    edges = np.concatenate([np.zeros((n, 1)), cuts, np.ones((n, 1))], axis=1)
    pieces = np.diff(edges, axis=1) * (length - stay.sum(axis=1))[:, None]
    durations = np.empty((n, 2 * slots + 1))
    durations[:, 0:-1:2], durations[:, 1::2], durations[:, -1] = pieces[:, :-1], stay, pieces[
        :, -1]
    places = np.empty((n, 2 * slots + 1), dtype=np.int32)
    places[:, 0::2] = base[:, None]
    for j in range(slots):
        places[:, 2 * j + 1] = np.where(used[:, j], _destination(layout, a, p, rng, base,
                                                                 visited, used[:, j]), base)
    return durations, places


def _initial_visited(a: Anchors, p: MobilityParams) -> _Visited:
    n, f = a.favourites.shape
    capacity = f + p.max_day_excursions + p.max_evening_excursions
    place = np.full((n, capacity), -1, dtype=np.int32)
    count = np.zeros((n, capacity))
    place[:, :f] = a.favourites
    count[:, :f] = 8.0 / (np.arange(1, f + 1) ** 1.2)  # Zipf-like visit frequencies
    return _Visited(place, count, np.full(n, f + 2.0))


def _destination(layout: Layout, a: Anchors, p: MobilityParams, rng: np.random.Generator,
                 base: BsArray, v: _Visited, active: BoolArray) -> BsArray:
    """Social trip, exploration of a new place, or preferential return (updates `v`)."""
    n = len(base)
    rows = np.arange(n)
    social = rng.uniform(size=n) < p.social_share
    friend = a.friends[rows, rng.integers(0, a.friends.shape[1], size=n)]
    weights = np.where(v.place >= 0, v.count, 0.0)
    total = weights.sum(axis=1)
    explore = (rng.uniform(size=n) < p.rho * v.known ** -p.gamma) | (total <= 0)
    new = _jump_from(layout, base, p.jump_r0_m, p.jump_beta, p.jump_cutoff_m, rng)
    pick = (np.cumsum(weights, axis=1) > (rng.uniform(size=n) * total)[:, None]).argmax(axis=1)
    returned = v.place[rows, pick]
    dest = np.where(social, friend, np.where(explore, new, returned)).astype(np.int32)
    # bookkeeping: a newly explored place takes the first free column, a return counts
    adds = active & ~social & explore
    free = (v.place < 0).argmax(axis=1)
    has_free = v.place[rows, free] < 0
    grow = adds & has_free
    v.place[rows[grow], free[grow]] = dest[grow]
    v.count[rows[grow], free[grow]] = 1.0
    back = active & ~social & ~explore
    v.count[rows[back], pick[back]] += 1.0
    v.known += adds
    return dest


# ----------------------------------------------------------------------------- API


def generate(layout: Layout, n_users: int, params: MobilityParams = MobilityParams(),
             seed: int = 0, day: int = 0, chunk_users: int = 8192,
             minutes: int = MINUTES_PER_DAY) -> Iterator[tuple[int, BsArray]]:
    """Yield (first user index, (users, minutes) BS array) chunk by chunk: bounded memory."""
    if n_users < 0 or chunk_users < 1:
        raise ValueError("n_users must be >= 0 and chunk_users >= 1")
    for first in range(0, n_users, chunk_users):
        yield first, generate_chunk(layout, min(chunk_users, n_users - first), params, seed,
                                    day, first, minutes)


def generate_chunk(layout: Layout, n_users: int, params: MobilityParams = MobilityParams(),
                   seed: int = 0, day: int = 0, first_user: int = 0,
                   minutes: int = MINUTES_PER_DAY) -> BsArray:
    """One chunk of users: anchors from (seed, first_user), the day from (…, day)."""
    anchors = make_anchors(layout, n_users, params,
                           np.random.default_rng([seed, first_user, 0]))
    return make_day(layout, anchors, params,
                    np.random.default_rng([seed, first_user, 1, day]), minutes)
