"""Where proxy VMs and their replicas go: top-k replicas, green-energy preference, energy.

Why these shapes:

* Replicas: a user spends most of the day at a few places (Fig. 6b: ~90 % of users at ≤ 4
  locations), so the static part of the proxy VM (semantic models, device profiles) is
  pre-placed at the user's k most visited fog nodes; a migration there moves only the
  difference. `top_k_nodes` ranks by time spent (minutes), ties broken by name so the
  choice is reproducible — the same rule as `simulation.top_places` with `by="time"`.
* Green energy: among destinations that cost the same core traffic (within a tolerance),
  prefer the one with the most excess green power; never trade core bytes for energy
  silently (`choose_node`).
* Power model per VM: a node draws idle power plus, per running VM, a share proportional
  to its vCPUs and memory (linear models are what the literature fits for servers).
  On-grid energy is the part of the draw the green supply does not cover, integrated
  over piecewise-constant intervals (`account`).

All pure: numbers and names in, numbers and names out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

DEFAULT_REPLICAS = 4


def top_k_nodes(minutes_at: Mapping[str, float], k: int = DEFAULT_REPLICAS) -> list[str]:
    """The k nodes with the most time spent, most first; ties by name."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    ranked = sorted((n for n, m in minutes_at.items() if m > 0),
                    key=lambda n: (-minutes_at[n], n))
    return ranked[:k]


def minutes_per_node(visits: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Sum (node, minutes) visits into time per node."""
    out: dict[str, float] = {}
    for node, minutes in visits:
        if minutes < 0:
            raise ValueError(f"negative visit length {minutes} at {node}")
        out[node] = out.get(node, 0.0) + minutes
    return out


@dataclass(frozen=True)
class ReplicaPlan:
    """Which nodes hold a user's static part, and what to add or drop to get there."""

    user: str
    nodes: tuple[str, ...]
    add: tuple[str, ...]
    drop: tuple[str, ...]


def plan_replicas(user: str, minutes_at: Mapping[str, float], current: Iterable[str],
                  k: int = DEFAULT_REPLICAS, home: str | None = None) -> ReplicaPlan:
    """Top-k nodes (the home node always included: the static part lives there)."""
    want = top_k_nodes(minutes_at, k)
    if home is not None and home not in want:
        want = [home, *want[:max(k - 1, 0)]] if k > 0 else [home]
    have = set(current)
    return ReplicaPlan(user, tuple(want), tuple(n for n in want if n not in have),
                       tuple(sorted(have - set(want))))


# ----------------------------------------------------------------------------- power


@dataclass(frozen=True)
class PowerModel:
    """Node draw in watts: idle + per VM (per vCPU and per GiB of memory)."""

    idle_w: float = 20.0
    per_vcpu_w: float = 6.0
    per_gib_w: float = 1.5

    def vm_w(self, vcpus: int, memory_mib: int) -> float:
        return self.per_vcpu_w * vcpus + self.per_gib_w * memory_mib / 1024

    def node_w(self, vms: Iterable[tuple[int, int]]) -> float:
        """Idle + the VMs running there, each given as (vcpus, memory MiB)."""
        return self.idle_w + sum(self.vm_w(c, m) for c, m in vms)


@dataclass(frozen=True)
class GreenTrace:
    """Green supply of one node as a step function: watts from each start time on."""

    starts_s: tuple[float, ...]
    watts: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.starts_s) != len(self.watts) or not self.starts_s:
            raise ValueError("a green trace needs as many start times as values, at least one")
        if any(b <= a for a, b in zip(self.starts_s, self.starts_s[1:], strict=False)):
            raise ValueError("green trace start times must increase")
        if any(w < 0 or not math.isfinite(w) for w in self.watts):
            raise ValueError("green power must be finite and >= 0")

    def at(self, t_s: float) -> float:
        """Supply at t (0 before the first step)."""
        value = 0.0
        for start, watts in zip(self.starts_s, self.watts, strict=True):
            if start > t_s:
                break
            value = watts
        return value

    @classmethod
    def constant(cls, watts: float) -> GreenTrace:
        return cls((0.0,), (watts,))

    @classmethod
    def solar(cls, peak_w: float, period_s: float, steps: int = 24,
              phase: float = 0.0) -> GreenTrace:
        """A day's solar curve squeezed into period_s: zero at night, a sine by day."""
        starts, watts = [], []
        for i in range(steps):
            frac = (i / steps + phase) % 1.0
            starts.append(i * period_s / steps)
            watts.append(max(0.0, peak_w * math.sin(2 * math.pi * (frac - 0.25))))
        return cls(tuple(starts), tuple(watts))


def excess_green_w(trace: GreenTrace, model: PowerModel, vms: Iterable[tuple[int, int]],
                   t_s: float) -> float:
    """Green power left over at t (negative: the node draws from the grid)."""
    return trace.at(t_s) - model.node_w(vms)


def choose_node(core_bytes: Mapping[str, float], excess_w: Mapping[str, float],
                tolerance_bytes: float = 0.0) -> str:
    """Least core traffic; among nodes within tolerance of it, the most excess green power.

    A node absent from excess_w counts as having none to spare. Ties by name.
    """
    if not core_bytes:
        raise ValueError("no candidate node")
    best = min(core_bytes.values())
    fair = [n for n, b in core_bytes.items() if b <= best + tolerance_bytes]
    return min(fair, key=lambda n: (-excess_w.get(n, -math.inf), core_bytes[n], n))


# ----------------------------------------------------------------------------- energy


@dataclass(frozen=True)
class Interval:
    """A node drawing power_w for duration_s while green supply was green_w."""

    node: str
    duration_s: float
    power_w: float
    green_w: float


@dataclass(frozen=True)
class EnergyTotals:
    green_joules: float = 0.0
    grid_joules: float = 0.0

    @property
    def total_joules(self) -> float:
        return self.green_joules + self.grid_joules

    def __add__(self, other: EnergyTotals) -> EnergyTotals:
        return EnergyTotals(self.green_joules + other.green_joules,
                            self.grid_joules + other.grid_joules)


def account(intervals: Iterable[Interval]) -> dict[str, EnergyTotals]:
    """Green and on-grid joules per node: the draw beyond the green supply is on-grid."""
    out: dict[str, EnergyTotals] = {}
    for iv in intervals:
        if iv.duration_s < 0 or iv.power_w < 0 or iv.green_w < 0:
            raise ValueError(f"negative duration or power in {iv}")
        green = min(iv.power_w, iv.green_w) * iv.duration_s
        grid = max(iv.power_w - iv.green_w, 0.0) * iv.duration_s
        out[iv.node] = out.get(iv.node, EnergyTotals()) + EnergyTotals(green, grid)
    return out


def intervals_from_timeline(node: str, changes: Sequence[tuple[float, float]], end_s: float,
                            trace: GreenTrace) -> list[Interval]:
    """Cut a node's (time, power) change list at its own and the green trace's steps."""
    cuts = sorted({t for t, _ in changes} | {s for s in trace.starts_s if s < end_s} | {end_s})
    out = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        power = next((p for t, p in reversed(changes) if t <= a), 0.0)
        out.append(Interval(node, b - a, power, trace.at(a)))
    return out
