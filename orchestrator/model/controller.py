"""The decision engine: on each roam, Eq. 1 decides whether a proxy VM follows its devices.

Why a pure, stateful engine: the live orchestrator (`edge/control.py`), the scenario
replay and the benchmark drive the very same object with the MME's roams and get back
`Action`s (place, migrate, stay, decompose, compose, reassign) — what is replayed is what
is deployed. Nothing here does I/O; time comes from the roam (and an injected clock for
the decision stamp); the migration time comes from the calibrated pre-copy predictor
(cached per memory size, bandwidth, dirty rate and extra storage bytes, so a decision costs
microseconds); T_BS comes from a `DwellEstimator`.

Proxies: a user has a main proxy (the whole proxy, or its static part after a
decomposition) and at most one mobile proxy. The rules, applied to the devices that
changed fog node in one update:

* a proxy whose devices are now all behind one other node N: Eq. 1 with r_data = the sum
  of their rates and M = the proxy's memory → migrate to N (or the greenest node among the
  BS's co-located nodes) or stay;
* some of the main proxy's devices moved to N while others stayed: Eq. 1 with the mobile
  devices' rate and the mobile part's memory → decompose (a new proxy at N takes their
  profiles and models) or stay;
* devices arriving where the other proxy of their user runs are handed to it (compose
  when the mobile proxy's devices are all back with the main proxy: the two become one);
* policy `static`: the proxy stays where it was placed; each roam still yields a logged
  `stay` with Eq. 1's numbers, so policies are compared on the same decisions.

Tmig with replicas (`dynamic+replicas`): a destination among the user's replica nodes
already holds the static part, so only the overlay moves with the memory; elsewhere the
static part's bytes move too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from orchestrator.model import dwell as dwell_model
from orchestrator.model.decision import Decision, decide
from orchestrator.model.mme import Mme, Roam
from orchestrator.model.placement import choose_node
from orchestrator.model.precopy import Calibration, MigrationInputs, predict

POLICIES = ("static", "dynamic", "dynamic+replicas")
ACTIONS = ("place", "migrate", "stay", "decompose", "compose", "reassign")
Clock = Callable[[], float]
GreenOracle = Callable[[str, float], float]  # (node, t) → excess green watts


class DwellEstimator(Protocol):
    def estimate_s(self, user: str, node: str, at_s: float) -> float: ...


@dataclass(frozen=True)
class ControlParams:
    """Units: bytes, seconds, bytes/s. Rates are per device unless `rates` names one."""

    policy: str = "dynamic"
    r_data_bps: float = 125_000.0  # per device (1 Mb/s)
    r_mig_bps: float = 20e6 / 8 * 1.0  # migration stream bandwidth (the paper's 20 Mb/s)
    epsilon_bytes: float = 500e3 / 8
    downtime_limit_s: float = 0.3
    dirty_rate_pages_s: float = 0.0
    static_part_bytes: int = 0  # the static part on disk, moved by a migration w/o replica
    overlay_bytes: int = 0  # what still moves onto a replica (the disk's overlay)
    mobile_memory_bytes: int = 128 * 2**20  # a decomposed mobile proxy
    decompose: bool = True
    green_tolerance_bytes: float = 0.0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; expected one of {POLICIES}")
        if self.r_data_bps < 0 or self.r_mig_bps <= 0 or self.epsilon_bytes < 0:
            raise ValueError("need r_data_bps >= 0, r_mig_bps > 0 and epsilon_bytes >= 0")


@dataclass(frozen=True)
class Proxy:
    name: str
    user: str
    node: str
    devices: frozenset[str]
    memory_bytes: int
    part: str = "whole"  # whole | static | mobile


@dataclass(frozen=True)
class Action:
    kind: str
    user: str
    proxy: str
    source: str | None
    destination: str | None
    devices: tuple[str, ...]
    at_s: float
    decision: Decision | None = None
    inputs: Mapping[str, Any] = field(default_factory=dict)
    into: str | None = None  # compose/reassign: the proxy taking the devices

    @property
    def verdict(self) -> str:
        return self.kind

    def as_event(self) -> dict[str, Any]:
        """What the store's "decision" event holds: inputs, threshold and verdict."""
        out: dict[str, Any] = {"verdict": self.kind, "user": self.user, "proxy": self.proxy,
                               "source": self.source, "destination": self.destination,
                               "devices": list(self.devices), "at_s": self.at_s,
                               "into": self.into, **dict(self.inputs)}
        if self.decision is not None:
            out.update(self.decision.as_dict())
        return out


# ----------------------------------------------------------------------------- Tmig


class TmigCache:
    """Tmig from the pre-copy predictor, memoised: the predictor iterates rounds (tens of
    µs), a decision must take a few; the key is what changes between decisions."""

    def __init__(self, calibration: Calibration | None = None) -> None:
        self.calibration = calibration
        self._cache: dict[tuple[int, float, float, float, int], float] = {}

    def t_mig_s(self, memory_bytes: int, r_mig_bps: float, dirty_rate_pages_s: float = 0.0,
                downtime_limit_s: float = 0.3, extra_bytes: int = 0) -> float:
        key = (memory_bytes, r_mig_bps, dirty_rate_pages_s, downtime_limit_s, extra_bytes)
        found = self._cache.get(key)
        if found is None:
            found = self._compute(*key)
            self._cache[key] = found
        return found

    def _compute(self, memory: int, r_mig: float, dirty: float, downtime: float,
                 extra: int) -> float:
        pred = predict(MigrationInputs(memory_bytes=memory, dirty_rate_pages_s=dirty,
                                       bandwidth_bytes_s=r_mig, downtime_limit_s=downtime),
                       self.calibration)
        if not pred.converges:
            return math.inf
        eff = pred.effective_bandwidth_bytes_s or r_mig
        return float(pred.total_time_s + extra / eff)


# ----------------------------------------------------------------------------- T_BS


@dataclass
class ConstantDwell:
    """A fixed T_BS (tests, and a baseline for the estimator's accuracy report)."""

    dwell_s: float

    def estimate_s(self, user: str, node: str, at_s: float) -> float:
        return self.dwell_s


class ModelDwell:
    """`dwell.DwellModel` behind names, with wall time compressed: one trace minute lasts
    `minute_s` wall seconds. Per user, the predictions for every (place, time-of-day bin)
    are computed in one vectorised call and kept as a small array, so a decision is an
    array lookup (`warm` precomputes many users at once)."""

    def __init__(self, model: dwell_model.DwellModel, users: Mapping[str, int],
                 places: Mapping[str, int], minute_s: float = 60.0, origin_s: float = 0.0,
                 n_minutes: int | None = None) -> None:
        self.model, self.users, self.places = model, dict(users), dict(places)
        self.minute_s, self.origin_s = minute_s, origin_s
        self.n_minutes = n_minutes
        self._n_places = max([*self.places.values(), model.n_places - 1]) + 1
        self._tables: dict[int, npt.NDArray[np.float64]] = {}

    def estimate_s(self, user: str, node: str, at_s: float) -> float:
        minute = max(int((at_s - self.origin_s) // self.minute_s), 0)
        uid, place = self.users.get(user, -1), self.places.get(node, -1)
        if uid < 0 or place < 0:  # unknown to the history: the population mean
            trace_s = self.model.global_mean_s
        else:
            table = self._tables.get(uid)
            if table is None:
                self.warm([user])
                table = self._tables[uid]
            trace_s = float(table[place, (minute % 1440) * self.model.bins_per_day // 1440])
        if self.n_minutes is not None:  # the trace's end is known: cap by the time left
            trace_s = min(trace_s, max(self.n_minutes - minute, 0) * 60.0)
        return trace_s * self.minute_s / 60.0

    def warm(self, users: Iterable[str], chunk: int = 512) -> None:
        """Precompute the (place, bin) tables of these users, `chunk` users per call."""
        ids = sorted({self.users[u] for u in users if u in self.users} - set(self._tables))
        n_p, n_b = self._n_places, self.model.bins_per_day
        for at in range(0, len(ids), chunk):
            part = np.array(ids[at:at + chunk], dtype=np.int64)
            cells = n_p * n_b
            user = np.repeat(part, cells)
            place = np.tile(np.repeat(np.arange(n_p, dtype=np.int64), n_b), len(part))
            start = np.tile(np.arange(n_b, dtype=np.int64) * 1440 // n_b, len(part) * n_p)
            visits = dwell_model.Visits(user, place, start, np.ones_like(user),
                                        int(part.max()) + 1, 1 << 40)
            pred = dwell_model.predict(self.model, visits).reshape(len(part), n_p, n_b)
            for i, uid in enumerate(part.tolist()):
                self._tables[uid] = pred[i]


# ----------------------------------------------------------------------------- engine


@dataclass
class Controller:
    params: ControlParams
    tmig: TmigCache
    dwell: DwellEstimator
    mme: Mme
    clock: Clock
    green: GreenOracle | None = None
    proxy_memory_bytes: int = 128 * 2**20
    rates: dict[str, float] = field(default_factory=dict)  # device → bytes/s
    replicas: dict[str, frozenset[str]] = field(default_factory=dict)  # user → nodes
    proxies: dict[str, list[Proxy]] = field(default_factory=dict)  # user → main[, mobile]

    # --- queries ---------------------------------------------------------------------

    def rate(self, devices: Iterable[str]) -> float:
        return sum(self.rates.get(d, self.params.r_data_bps) for d in devices)

    def proxy_of(self, user: str, device: str) -> Proxy | None:
        return next((p for p in self.proxies.get(user, []) if device in p.devices), None)

    def set_replicas(self, user: str, nodes: Iterable[str]) -> None:
        self.replicas[user] = frozenset(nodes)

    # --- the entry point ---------------------------------------------------------------

    def on_roams(self, roams: Iterable[Roam]) -> list[Action]:
        """Actions for one update's roams (one user's devices are handled together)."""
        by_user: dict[str, list[Roam]] = {}
        for roam in roams:
            if roam.node_changed:
                by_user.setdefault(roam.user, []).append(roam)
        actions: list[Action] = []
        for user, rs in by_user.items():
            actions.extend(self._user(user, rs))
        return actions

    def _user(self, user: str, roams: list[Roam]) -> list[Action]:
        at_s = max(r.at_s for r in roams)
        if user not in self.proxies:
            return [self._place(user, roams[0].to_bs, at_s)]
        actions = []
        for node, devices in self._arrivals(roams).items():
            actions.extend(self._arrive(user, node, devices, at_s))
        return actions

    def _arrivals(self, roams: list[Roam]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for r in roams:
            out.setdefault(r.to_node, []).append(r.device)
        return out

    def _place(self, user: str, bs_id: str, at_s: float) -> Action:
        node = self._pick(self.mme.stations[bs_id].nodes, at_s)
        devices = frozenset(self.mme.devices_of(user))
        proxy = Proxy(f"px-{user}", user, node, devices, self.proxy_memory_bytes)
        self.proxies[user] = [proxy]
        return Action("place", user, proxy.name, None, node, tuple(sorted(devices)), at_s)

    def _pick(self, nodes: tuple[str, ...], at_s: float) -> str:
        if self.green is None or len(nodes) == 1:
            return nodes[0]
        green = self.green
        return choose_node({n: 0.0 for n in nodes}, {n: green(n, at_s) for n in nodes},
                           self.params.green_tolerance_bytes)

    # --- one group of devices arriving at one node -------------------------------------

    def _arrive(self, user: str, node: str, devices: list[str], at_s: float) -> list[Action]:
        actions = []
        by_proxy: dict[str, list[str]] = {}
        for d in devices:
            p = self.proxy_of(user, d)
            if p is not None:
                by_proxy.setdefault(p.name, []).append(d)
        for name, devs in by_proxy.items():
            proxy = self._named(user, name)
            if proxy is None or proxy.node == node:
                continue  # back where their proxy runs: local again
            actions.append(self._for_group(user, proxy, node, tuple(sorted(devs)), at_s))
        actions.extend(self._compose_if_together(user, at_s))
        return actions

    def _named(self, user: str, name: str) -> Proxy | None:
        return next((p for p in self.proxies.get(user, []) if p.name == name), None)

    def _for_group(self, user: str, proxy: Proxy, node: str, devs: tuple[str, ...],
                   at_s: float) -> Action:
        other = next((p for p in self.proxies[user] if p.name != proxy.name), None)
        if other is not None and other.node == node:
            return self._reassign(user, proxy, other, devs, at_s)
        whole = self._all_at(proxy, node)
        if whole:
            return self._decide(user, proxy, node, proxy.devices, proxy.memory_bytes,
                                "migrate", at_s)
        if proxy.part != "mobile" and other is None and self.params.decompose:
            return self._decide(user, proxy, node, frozenset(devs),
                                self.params.mobile_memory_bytes, "decompose", at_s)
        return self._stay(user, proxy, node, devs, at_s, "devices split across nodes")

    def _all_at(self, proxy: Proxy, node: str) -> bool:
        for d in proxy.devices:
            place = self.mme.where(d)
            if place is not None and place[1] != node:
                return False
        return True

    def _decide(self, user: str, proxy: Proxy, node: str, devices: frozenset[str],
                memory: int, kind: str, at_s: float) -> Action:
        p = self.params
        dest = self._pick(self._nodes_like(node), at_s)
        replica = p.policy == "dynamic+replicas" and dest in self.replicas.get(user, ())
        extra = p.overlay_bytes if replica else p.static_part_bytes
        if kind == "decompose":
            extra = 0  # the mobile part is memory only: profiles and models
        t_mig = self.tmig.t_mig_s(memory, p.r_mig_bps, p.dirty_rate_pages_s,
                                  p.downtime_limit_s, extra)
        dwell_s = self.dwell.estimate_s(user, dest, at_s)
        r_data = self.rate(devices)
        decision = decide(min(t_mig, 1e18), dwell_s, r_data, p.r_mig_bps, p.epsilon_bytes)
        inputs = {"policy": p.policy, "memory_bytes": memory, "replica": replica,
                  "extra_bytes": extra, "kind": kind}
        if p.policy == "static" or not decision.migrate:
            reason = "static policy" if p.policy == "static" else "Eq. 1 says stay"
            return Action("stay", user, proxy.name, proxy.node, dest, tuple(sorted(devices)),
                          at_s, decision, {**inputs, "reason": reason})
        if kind == "migrate":
            self._replace(user, proxy, replace(proxy, node=dest))
            return Action("migrate", user, proxy.name, proxy.node, dest,
                          tuple(sorted(devices)), at_s, decision, inputs)
        return self._decompose(user, proxy, dest, devices, at_s, decision, inputs)

    def _nodes_like(self, node: str) -> tuple[str, ...]:
        """The node and the nodes co-located with it at some BS (same core cost)."""
        for bs in self.mme.stations.values():
            if bs.node == node:
                return bs.nodes
        return (node,)

    def _decompose(self, user: str, proxy: Proxy, dest: str, devices: frozenset[str],
                   at_s: float, decision: Decision, inputs: Mapping[str, Any]) -> Action:
        mobile = Proxy(f"{proxy.name}-m", user, dest, devices,
                       self.params.mobile_memory_bytes, "mobile")
        self._replace(user, proxy, replace(proxy, devices=proxy.devices - devices,
                                           part="static"))
        self.proxies[user].append(mobile)
        return Action("decompose", user, proxy.name, proxy.node, dest, tuple(sorted(devices)),
                      at_s, decision, inputs, into=mobile.name)

    def _reassign(self, user: str, proxy: Proxy, other: Proxy, devs: tuple[str, ...],
                  at_s: float) -> Action:
        moved = frozenset(devs)
        self._replace(user, proxy, replace(proxy, devices=proxy.devices - moved))
        self._replace(user, other, replace(other, devices=other.devices | moved))
        return Action("reassign", user, proxy.name, proxy.node, other.node, devs, at_s,
                      inputs={"reason": "devices joined their user's other proxy"},
                      into=other.name)

    def _compose_if_together(self, user: str, at_s: float) -> list[Action]:
        """Two proxies of a user on one node, or an emptied mobile proxy: make them one."""
        ps = self.proxies.get(user, [])
        if len(ps) < 2:
            return []
        main, mobile = ps[0], ps[1]
        if main.node != mobile.node and mobile.devices and main.devices:
            return []
        keep, gone = (mobile, main) if not main.devices else (main, mobile)
        self.proxies[user] = [replace(keep, devices=main.devices | mobile.devices,
                                      part="whole")]
        return [Action("compose", user, gone.name, gone.node, keep.node,
                       tuple(sorted(gone.devices)), at_s, into=keep.name)]

    def _stay(self, user: str, proxy: Proxy, node: str, devs: tuple[str, ...], at_s: float,
              reason: str) -> Action:
        return Action("stay", user, proxy.name, proxy.node, node, devs, at_s,
                      inputs={"reason": reason})

    def _replace(self, user: str, old: Proxy, new: Proxy) -> None:
        self.proxies[user] = [new if p.name == old.name else p for p in self.proxies[user]]

    # --- the adapter reports back --------------------------------------------------------

    def failed(self, action: Action) -> None:
        """An applied action failed and the adapter restored the world: a migrated proxy is
        still at the source, a decomposition's devices are still with the main proxy (the
        mobile one is gone), reassigned devices are still with their proxy. (A failed
        composition is not undone here: the adapter re-reads what really runs.)"""
        user = action.user
        proxy = self._named(user, action.proxy)
        if action.kind == "migrate" and action.source is not None and proxy is not None:
            self._replace(user, proxy, replace(proxy, node=action.source))
        elif action.kind == "decompose" and proxy is not None:
            rest = [p for p in self.proxies[user] if p.name not in (action.into, proxy.name)]
            whole = replace(proxy, devices=proxy.devices | frozenset(action.devices),
                            part="whole" if not rest else proxy.part)
            self.proxies[user] = [whole, *rest]
        elif action.kind == "reassign" and proxy is not None and action.into is not None:
            other = self._named(user, action.into)
            if other is not None:
                moved = frozenset(action.devices)
                self._replace(user, other, replace(other, devices=other.devices - moved))
                self._replace(user, proxy, replace(proxy, devices=proxy.devices | moved))
