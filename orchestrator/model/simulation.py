"""Core traffic of proxy-VM placement policies over a mobility trace (Fig. 6 and beyond).

Why this shape: the trace is turned once into fog-level visits (`dwell.Visits`); each
policy is then a handful of vectorised passes over those visits, so one policy over
13,000 users × 1,440 minutes costs milliseconds and the paper's sweep is cheap.

Accounting (per visit of a user to the fog node `place`, lasting D seconds):

* the proxy is where it was left; a visit to another node is *remote*;
* staying: every byte of the visit crosses the core, `core_bytes_if_staying(D, r_data)`;
* migrating: `core_bytes_if_migrating` (stream r_mig·Tmig, data during the migration,
  ε) — Eq. 1's own terms, from `decision.py`. When the user leaves before the migration
  ends (D < Tmig) only D seconds of data are charged to this visit; the proxy counts as
  moved from the next visit on (the tail of the copy overlaps the next visit: a small,
  optimistic approximation);
* the decision is Eq. 1, `Tmig < migration_threshold_s(T̂_BS, r_data, r_mig, ε)`, with T̂_BS
  predicted (`dynamic`), the truth (`oracle`) or, for `replicas`, with the smaller Tmig of
  a migration onto one of the user's top-k fog nodes, where a stale replica waits and only
  the memory that changed has to move.

Because the rule does not depend on where the proxy is, the proxy's place before visit i
is the place of the user's last earlier visit the rule approved (or home): a forward fill,
no per-user loop.

Policies: `static` (proxy stays at home, the user's first fog node), `dynamic`, `oracle`,
`replicas` (dynamic + top-k replicas), `energy` (Eq. 1 re-weighted by energy: host energy
per migrated byte and a fixed energy per migration are converted into core-byte
equivalents, so the very same threshold function decides).

Results are additive `Totals`, so a million users are simulated chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import numpy.typing as npt

from orchestrator.model.decision import (
    core_bytes_if_migrating,
    core_bytes_if_staying,
    migration_threshold_s,
)
from orchestrator.model.dwell import FloatArray, IntArray, Visits

POLICIES = ("static", "dynamic", "oracle", "replicas", "energy")
PLACEMENTS = ("time", "arrivals")
PAPER_FIG6B = {0.90: 92.22, 0.95: 86.93, 0.99: 75.65}  # % of users at ≤ 4 locations
MBIT = 1e6 / 8  # bytes per second in one Mb/s


@dataclass(frozen=True)
class EnergyModel:
    """Energy prices. Order-of-magnitude defaults; set them from your own measurements.

    core_j_per_byte: transport energy of one byte across the SDN core (routers, links).
    host_j_per_byte: extra host energy per migrated byte (Liu et al., HPDC 2011, found
    live-migration energy linear in the bytes sent, ~0.5 J/MB); host_j_per_migration: the
    fixed part (setup, switch-over).
    """

    core_j_per_byte: float = 1e-6
    host_j_per_byte: float = 5e-7
    host_j_per_migration: float = 20.0


@dataclass(frozen=True)
class Scenario:
    """One policy at one operating point. Units: bytes, seconds, bytes per second."""

    policy: str
    r_data_bps: float
    t_mig_s: float = float("inf")
    r_mig_bps: float = 20 * MBIT  # the paper's 20 Mb/s
    epsilon_bytes: float = 500e3 / 8  # the paper's ς = 500 kb
    replicas: int = 0
    placement: str = "time"
    replica_delta: float = 0.25  # share of memory still to move onto a replica
    replica_t_mig_s: float | None = None  # None: t_mig_s × replica_delta
    energy: EnergyModel = field(default_factory=EnergyModel)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; expected one of {POLICIES}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {self.placement!r}; expected {PLACEMENTS}")
        if self.r_data_bps < 0 or self.r_mig_bps <= 0 or self.epsilon_bytes < 0:
            raise ValueError("need r_data_bps >= 0, r_mig_bps > 0 and epsilon_bytes >= 0")
        if self.t_mig_s < 0 or self.replicas < 0 or not 0 <= self.replica_delta <= 1:
            raise ValueError("need t_mig_s >= 0, replicas >= 0 and 0 <= replica_delta <= 1")

    @property
    def t_mig_to_replica_s(self) -> float:
        if self.replica_t_mig_s is not None:
            return self.replica_t_mig_s
        return self.t_mig_s * self.replica_delta

    def label(self) -> dict[str, float | int | str]:
        return {"policy": self.policy, "r_data_bps": self.r_data_bps, "t_mig_s": self.t_mig_s,
                "r_mig_bps": self.r_mig_bps, "epsilon_bytes": self.epsilon_bytes,
                "replicas": self.replicas, "placement": self.placement}


@dataclass(frozen=True)
class Totals:
    """What a policy cost over the trace; add two to merge chunks of users."""

    users: int = 0
    user_seconds: float = 0.0
    core_bytes: float = 0.0
    migrations: int = 0
    migration_bytes: float = 0.0  # the migration streams alone (r_mig·Tmig each)
    remote_seconds: float = 0.0  # devices served by a fog node other than the proxy's
    energy_j: float = 0.0

    def __add__(self, other: Totals) -> Totals:
        return Totals(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def remote_fraction(self) -> float:
        """E2E delay proxy: share of device time served through the core."""
        return self.remote_seconds / self.user_seconds if self.user_seconds else 0.0

    def as_dict(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["remote_fraction"] = self.remote_fraction
        return out


@dataclass(frozen=True)
class Prepared:
    """Fog-level visits of a chunk of users plus what the policies need about them."""

    visits: Visits
    home: IntArray  # the user's first fog node: where the proxy starts
    first: IntArray  # index of each user's first visit
    predicted_s: FloatArray  # estimated dwell per visit
    top: Mapping[str, npt.NDArray[np.int64]]  # placement → (users, max_k), −1 padded


def prepare(visits: Visits, predicted_s: FloatArray, history: Visits | None = None,
            max_replicas: int = 4) -> Prepared:
    """Precompute homes and replica candidates (from `history` when given, else the trace)."""
    if predicted_s.shape != (len(visits),):
        raise ValueError("need one predicted dwell per visit")
    first = visits.first_index()
    source = visits if history is None else history
    top = {p: top_places(source, max_replicas, p) for p in PLACEMENTS}
    return Prepared(visits, visits.place[first], first, predicted_s, top)


def top_places(visits: Visits, k: int, by: str = "time") -> npt.NDArray[np.int64]:
    """Each user's k fog nodes with the most minutes (`time`) or arrivals (`arrivals`)."""
    if by not in PLACEMENTS:
        raise ValueError(f"unknown placement {by!r}; expected {PLACEMENTS}")
    out = np.full((visits.n_users, k), -1, dtype=np.int64)
    if k == 0 or len(visits) == 0:
        return out
    n_places = int(visits.place.max()) + 1
    key = visits.user * n_places + visits.place
    weight = visits.dur_min if by == "time" else np.ones(len(visits))
    uniq, inv = np.unique(key, return_inverse=True)
    score = np.bincount(inv, weights=weight, minlength=len(uniq))
    user, place = uniq // n_places, uniq % n_places
    order = np.lexsort((place, -score, user))
    user, place = user[order], place[order]
    rank = np.arange(len(user)) - np.searchsorted(user, user)
    keep = rank < k
    out[user[keep], rank[keep]] = place[keep]
    return out


# ----------------------------------------------------------------------------- policies


def run(prep: Prepared, sc: Scenario) -> Totals:
    """Simulate one scenario over the prepared users."""
    if sc.policy == "static":
        return _static(prep, sc)
    v = prep.visits
    dwell = v.dwell_s if sc.policy == "oracle" else prep.predicted_s
    t_mig = np.full(len(v), sc.t_mig_s)
    if sc.policy == "replicas" and sc.replicas > 0:
        t_mig[_at_replica(prep, sc, v)] = sc.t_mig_to_replica_s
    r_mig_rule, eps_rule = sc.r_mig_bps, sc.epsilon_bytes
    if sc.policy == "energy":
        e = sc.energy
        r_mig_rule = sc.r_mig_bps * (1 + e.host_j_per_byte / e.core_j_per_byte)
        eps_rule = sc.epsilon_bytes + e.host_j_per_migration / e.core_j_per_byte
    want = t_mig < migration_threshold_s(dwell, sc.r_data_bps, r_mig_rule, eps_rule)
    proxy = _proxy_before(v, prep, want)
    remote = v.place != proxy
    return _account(prep, sc, remote, remote & want, t_mig)


def _static(prep: Prepared, sc: Scenario) -> Totals:
    v = prep.visits
    remote = v.place != prep.home[v.user]
    return _account(prep, sc, remote, np.zeros(len(v), dtype=np.bool_), np.zeros(len(v)))


def _at_replica(prep: Prepared, sc: Scenario, v: Visits) -> npt.NDArray[np.bool_]:
    table = prep.top[sc.placement]
    if sc.replicas > table.shape[1]:
        raise ValueError(f"prepared for at most {table.shape[1]} replicas, asked {sc.replicas}")
    hosts = table[v.user, :sc.replicas]
    found: npt.NDArray[np.bool_] = (hosts == v.place[:, None]).any(axis=1)
    return found


def _proxy_before(v: Visits, prep: Prepared, want: npt.NDArray[np.bool_]) -> IntArray:
    """Where the proxy is when each visit starts: the last approved earlier visit, or home."""
    idx = np.where(want, np.arange(len(v)), -1)
    last = np.maximum.accumulate(idx) if len(idx) else idx
    prev = np.concatenate([[-1], last[:-1]]).astype(np.int64)
    own = prev >= prep.first[v.user]
    proxy: IntArray = np.where(own, v.place[np.maximum(prev, 0)], prep.home[v.user])
    return proxy


def _account(prep: Prepared, sc: Scenario, remote: npt.NDArray[np.bool_],
             migrate: npt.NDArray[np.bool_], t_mig: FloatArray) -> Totals:
    v = prep.visits
    dwell = v.dwell_s
    stay = remote & ~migrate
    d, t = dwell[migrate], t_mig[migrate]
    move = (core_bytes_if_migrating(t, d, sc.r_data_bps, sc.r_mig_bps, sc.epsilon_bytes)
            - sc.r_data_bps * np.maximum(t - d, 0.0))  # left before the copy ended
    core = float(core_bytes_if_staying(dwell[stay], sc.r_data_bps).sum() + move.sum())
    streams = float((sc.r_mig_bps * t).sum())
    n_mig = int(migrate.sum())
    e = sc.energy
    energy = (core * e.core_j_per_byte + streams * e.host_j_per_byte
              + n_mig * e.host_j_per_migration)
    return Totals(users=v.n_users, user_seconds=float(v.n_users * v.n_minutes * 60.0),
                  core_bytes=core, migrations=n_mig, migration_bytes=streams,
                  remote_seconds=float(dwell[stay].sum() + np.minimum(t, d).sum()),
                  energy_j=float(energy))


def run_many(prep: Prepared, scenarios: Sequence[Scenario]) -> list[Totals]:
    return [run(prep, sc) for sc in scenarios]


def accumulate(chunks: Iterable[Prepared], scenarios: Sequence[Scenario]) -> list[Totals]:
    """Run every scenario on every chunk and add the totals (memory: one chunk at a time)."""
    totals = [Totals() for _ in scenarios]
    for prep in chunks:
        totals = [a + b for a, b in zip(totals, run_many(prep, scenarios), strict=True)]
    return totals


# ----------------------------------------------------------------------------- sweeps


def fig6a_scenarios(r_data_bps: Sequence[float], t_mig_by_memory: Mapping[int, float],
                    policies: Sequence[str] = ("static", "dynamic", "oracle"),
                    base: Scenario | None = None,
                    replica_t_mig_by_memory: Mapping[int, float] | None = None,
                    ) -> list[tuple[int, Scenario]]:
    """(memory bytes, scenario) for every r_data × M × policy, as in Fig. 6a."""
    template = base or Scenario("static", 0.0)
    out = []
    for memory, t_mig in t_mig_by_memory.items():
        rep = None if replica_t_mig_by_memory is None else replica_t_mig_by_memory[memory]
        for policy in policies:
            for r in r_data_bps:
                out.append((memory, replace(template, policy=policy, r_data_bps=r,
                                            t_mig_s=t_mig, replica_t_mig_s=rep)))
    return out


def replica_sweep(base: Scenario, ks: Sequence[int],
                  placements: Sequence[str] = PLACEMENTS) -> list[Scenario]:
    """Replica count k × placement (k = 0 is plain dynamic)."""
    return [replace(base, policy="replicas", replicas=k, placement=p)
            for p in placements for k in ks]


def epsilon_sweep(base: Scenario, epsilons_bytes: Sequence[float],
                  policies: Sequence[str] = ("dynamic", "oracle")) -> list[Scenario]:
    return [replace(base, policy=p, epsilon_bytes=e) for p in policies for e in epsilons_bytes]


# ----------------------------------------------------------------------------- Fig. 6b


@dataclass(frozen=True)
class LocationShares:
    """Users whose top-n locations hold ≥ f of their day, for n = 1…max_n; additive."""

    fractions: tuple[float, ...]
    counts: npt.NDArray[np.int64]  # (len(fractions), max_n)
    users: int

    def __add__(self, other: LocationShares) -> LocationShares:
        if self.fractions != other.fractions or self.counts.shape != other.counts.shape:
            raise ValueError("cannot add location shares of different shapes")
        return LocationShares(self.fractions, self.counts + other.counts,
                              self.users + other.users)

    def percent(self, fraction: float, n: int = 4) -> float:
        """% of users spending ≥ fraction of the day at ≤ n locations."""
        row = self.fractions.index(fraction)
        return 100.0 * float(self.counts[row, n - 1]) / self.users if self.users else 0.0


def location_shares(visits: Visits, fractions: Sequence[float] = tuple(PAPER_FIG6B),
                    max_n: int = 10) -> LocationShares:
    """Fig. 6b statistic over BS-level visits."""
    fr = tuple(float(f) for f in fractions)
    if len(visits) == 0:
        return LocationShares(fr, np.zeros((len(fr), max_n), dtype=np.int64), visits.n_users)
    n_places = int(visits.place.max()) + 1
    uniq, inv = np.unique(visits.user * n_places + visits.place, return_inverse=True)
    minutes = np.bincount(inv, weights=visits.dur_min, minlength=len(uniq))
    user = uniq // n_places
    order = np.lexsort((-minutes, user))
    user, minutes = user[order], minutes[order]
    rank = np.arange(len(user)) - np.searchsorted(user, user)
    within = np.zeros((visits.n_users, max_n))
    keep = rank < max_n
    within[user[keep], rank[keep]] = minutes[keep]
    share = np.cumsum(within, axis=1) / visits.n_minutes  # (users, n): top-n share of the day
    counts = np.stack([(share >= f - 1e-12).sum(axis=0) for f in fr]).astype(np.int64)
    return LocationShares(fr, counts, visits.n_users)
