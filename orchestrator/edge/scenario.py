"""Live replay of a mobility trace against the lab: real proxy VMs, devices, migrations.

Why this shape: the paper's claim is about bytes on the core, so the replay measures them
where they flow — the lab's root-side core veth counters — while the very engine that
serves live location updates (`model.controller`, same dwell estimator and Eq. 1 as the
simulator) decides, and the very code that serves it live (`edge.control.FleetApplier`,
`edge.handover`) decomposes and composes. Per policy:

1. each user gets a proxy VM (128 MiB, a qcow2 overlay on the user's static part) at the
   fog node of their first BS; for `dynamic+replicas` the static part is also pre-placed
   at the user's top-k fog nodes (before the counters are read: replicas are placed
   off-peak);
2. each user's devices (`edge.scenario_devices`: a device at home and a car, real issue-3
   emulators with acked, sequence-numbered records) stream to the proxy; the car's radios
   follow the trace between the fog nodes' namespaces. Beside them, the car's bulk stream
   (UDP at r_data, from inside the namespace of the node the car is behind, to the proxy
   serving the car) is what makes r_data high: it crosses the core exactly when the car's
   proxy is elsewhere. Trace minutes tick by, each lasting 60 / speedup wall seconds;
3. roams go through the MME and the engine; a car leaving home while the home device
   stays is Eq. 1 on a decomposition (a mobile proxy boots where the car is and the car's
   devices are handed over with their stream state), coming back composes; a user without
   a home device (`roaming_users`) migrates whole (storage + memory, incremental onto
   replicas, uncapped: see the TCG note in edge/replicas.py). Actions run in worker
   threads, in order per user, so the trace goes on while a VM boots or migrates;
4. core bytes = Σ bytes the nodes sent into the core between the start and the end
   (after the last action); beside them, the simulator's prediction for the same trace.
   At the end the emulators drain and every device's records are compared with what the
   proxy serving it accepted (exactly once: sent = acked = accepted, same hash chain).

Loops take their clock and sleep as parameters. The bulk stream runs in a separate
process (`python -m orchestrator.edge.scenario stream …`), netguard-checked.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from orchestrator.edge.control import ControlPlane, proxies_from_store
from orchestrator.edge.migrate import core_meter_mbit, metered_bandwidth_mib_s
from orchestrator.edge.proxies import ProxyService
from orchestrator.edge.replicas import ReplicaService
from orchestrator.edge.scenario_actions import (
    HANDOVERS,
    ReplayApplier,
    decision_row,
    succeeded,
    with_outcomes,
)
from orchestrator.edge.scenario_devices import (
    DeviceWorld,
    UserDevices,
    device_rates,
    first_update,
    plan_devices,
    roam_update,
)
from orchestrator.edge.users import proxy_name
from orchestrator.edge.vms import VmService
from orchestrator.errors import OrchestratorError, UserError
from orchestrator.fog.node import FogNode
from orchestrator.fog.session import FleetSession
from orchestrator.model import dwell as dwell_model
from orchestrator.model import simulation
from orchestrator.model.controller import (
    Action,
    Controller,
    ControlParams,
    ModelDwell,
    Proxy,
    TmigCache,
)
from orchestrator.model.mme import BaseStation, Mme
from orchestrator.model.placement import (
    GreenTrace,
    PowerModel,
    account,
    intervals_from_timeline,
    top_k_nodes,
)
from orchestrator.model.precopy import Calibration
from orchestrator.model.traces import TraceError, parse_row
from orchestrator.netguard import LabNetwork, NetworkPolicy, check_destination
from orchestrator.store import Store, open_store

POLICIES = ("static", "dynamic", "dynamic+replicas")
REPO_ROOT = Path(__file__).resolve().parents[2]
Clock = Callable[[], float]
Sleep = Callable[[float], None]


@dataclass(frozen=True)
class ReplayConfig:
    speedup: float = 20.0  # a trace minute lasts 60 / speedup wall seconds
    r_data_bps: float = 3e6  # per user bulk stream (the car's raw data), wall bytes/s
    r_mig_bps: float = 50 * 2**20  # measured on the unshaped lab core: ~84 MB in ~2 s
    epsilon_bytes: float = 500e3 / 8
    memory_mib: int = 128  # each proxy, and a decomposition's mobile part
    static_part_bytes: int = 32 * 2**20
    overlay_bytes: int = 2**20
    replicas: int = 4
    decompose: bool = True
    roaming_users: tuple[str, ...] = ()  # users without a home device: they migrate whole
    device_hz: float = 5.0  # the emulated devices' record rate
    boot_wait_s: float = 90.0  # a mobile proxy's boot, TCG under load

    @property
    def minute_s(self) -> float:
        return 60.0 / self.speedup


def metered_config(cfg: ReplayConfig, nodes: Iterable[FogNode]) -> ReplayConfig:
    """r_mig as the replay's migrations run: just under the core's migration meter when the
    lab has one (MigrationService caps them there), else the configured figure."""
    rate = core_meter_mbit(nodes)
    if rate is None:
        return cfg
    return replace(cfg, r_mig_bps=float(metered_bandwidth_mib_s(rate) * 2**20))


@dataclass(frozen=True)
class Trace:
    users: tuple[str, ...]
    bs: tuple[tuple[str, ...], ...]  # per user, the BS id of each minute

    @property
    def n_minutes(self) -> int:
        return len(self.bs[0]) if self.bs else 0


# ----------------------------------------------------------------------------- pure parts


def parse_small_trace(lines: list[str]) -> Trace:
    """A small `user,minute,bs_id` CSV (validated row by row; users must cover the same
    minutes 0…n−1 in order). User ids become names `u<id>`."""
    rows: dict[int, list[str]] = {}
    for no, line in enumerate(lines, 1):
        if not line.strip() or (no == 1 and line.startswith("user")):
            continue
        user, minute, bs = parse_row(line, no)
        seen = rows.setdefault(user, [])
        if minute != len(seen):
            raise TraceError(no, f"user {user}: minute {minute}, expected {len(seen)}")
        seen.append(str(bs))
    if not rows:
        raise TraceError(1, "empty trace")
    lengths = {len(v) for v in rows.values()}
    if len(lengths) != 1:
        raise TraceError(len(lines), "users cover different numbers of minutes")
    return Trace(tuple(f"u{u}" for u in sorted(rows)), tuple(tuple(rows[u]) for u in sorted(rows)))


def default_bs_map(bs_ids: set[str], nodes: list[str],
                   recorded: dict[str, str]) -> dict[str, str]:
    """Recorded base stations first; the others round-robin over the nodes by id."""
    out = {b: recorded[b] for b in bs_ids if b in recorded}
    rest = sorted((b for b in bs_ids if b not in recorded), key=lambda b: (len(b), b))
    for i, b in enumerate(rest):
        out[b] = nodes[i % len(nodes)]
    return out


def node_minutes(trace: Trace, bs_map: dict[str, str], nodes: list[str]) -> np.ndarray:
    """(users, minutes) array of node indices."""
    index = {n: i for i, n in enumerate(nodes)}
    return np.array([[index[bs_map[b]] for b in row] for row in trace.bs], dtype=np.int64)


def roam_schedule(trace: Trace) -> list[tuple[int, str, str]]:
    """(minute, user, bs) for minute 0 and every BS change."""
    out = []
    for user, row in zip(trace.users, trace.bs, strict=True):
        out += [(m, user, b) for m, b in enumerate(row) if m == 0 or b != row[m - 1]]
    return sorted(out)


def fit_dwell(places: np.ndarray, n_nodes: int) -> dwell_model.DwellModel:
    """T_BS tables fitted on the trace itself (no earlier day: an optimistic history)."""
    return dwell_model.fit(dwell_model.visits_from_minutes(places), n_nodes, min_count=1)


def select_users(visits: dwell_model.Visits, predicted: npt.NDArray[np.float64],
                 keep: npt.NDArray[np.bool_]) -> tuple[dwell_model.Visits,
                                                       npt.NDArray[np.float64]]:
    """The visits (and their predictions) of the users in `keep`, users renumbered 0…k−1."""
    rows = keep[visits.user]
    new_id = np.cumsum(keep) - 1
    sub = dwell_model.Visits(new_id[visits.user[rows]].astype(np.int64), visits.place[rows],
                             visits.start_min[rows], visits.dur_min[rows], int(keep.sum()),
                             visits.n_minutes)
    return sub, predicted[rows]


def simulate(places: np.ndarray, n_nodes: int, cfg: ReplayConfig, t_mig_s: float,
             t_mig_replica_s: float, t_mig_part_s: float | None = None,
             parted: npt.NDArray[np.bool_] | None = None) -> dict[str, dict[str, float | int]]:
    """The trace simulator's core bytes for the same trace and rates (wall units).

    Users in `parted` (a home device pins their proxy; decomposition is on) move only a
    mobile part, memory without a disk (`t_mig_part_s`), replicas or not; the others move
    whole (`t_mig_s`, or `t_mig_replica_s` onto a replica). Each group is simulated with
    its own Tmig over dwell predictions fitted on the whole trace, and the totals added."""
    f = cfg.minute_s / 60.0  # wall seconds per trace second
    visits = dwell_model.visits_from_minutes(places)
    predicted = dwell_model.predict(fit_dwell(places, n_nodes), visits)
    mask = np.zeros(places.shape[0], dtype=np.bool_) if parted is None else parted
    part = t_mig_s if t_mig_part_s is None else t_mig_part_s
    groups = ((~mask, t_mig_s, t_mig_replica_s), (mask, part, part))
    out = {}
    for policy, sim_policy in (("static", "static"), ("dynamic", "dynamic"),
                               ("dynamic+replicas", "replicas")):
        total = simulation.Totals()
        for users, t_full, t_rep in groups:
            if not users.any():
                continue
            sub, pred = select_users(visits, predicted, users)
            prep = simulation.prepare(sub, pred, max_replicas=max(cfg.replicas, 1))
            sc = simulation.Scenario(sim_policy, r_data_bps=cfg.r_data_bps * f,
                                     t_mig_s=t_full / f, r_mig_bps=cfg.r_mig_bps * f,
                                     epsilon_bytes=cfg.epsilon_bytes, replicas=cfg.replicas,
                                     replica_t_mig_s=t_rep / f)
            total += simulation.run(prep, sc)
        out[policy] = total.as_dict()
    return out


def counter_deltas(after: Mapping[str, Mapping[str, int]],
                   before: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Per-key counter deltas ({node or class: {field: n}}) of what both snapshots hold."""
    return {k: {f: int(v) - int(before[k].get(f, 0)) for f, v in fields.items()}
            for k, fields in after.items() if k in before}


def core_total(counters: dict[str, dict[str, int]]) -> int:
    """Bytes that entered the core (each crossing counted once, at its sender)."""
    return sum(c["to_core"] for c in counters.values())


def device_summary(devices: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Totals over every device's exactly-once figures."""
    figures = [f for per_user in devices.values() for f in per_user.values()]
    return {"devices": len(figures), "records": sum(f.get("sent") or 0 for f in figures),
            "exactly_once": sum(bool(f.get("exactly_once")) for f in figures)}


def make_params(cfg: ReplayConfig, policy: str) -> ControlParams:
    return ControlParams(policy=policy, r_data_bps=cfg.r_data_bps, r_mig_bps=cfg.r_mig_bps,
                         epsilon_bytes=cfg.epsilon_bytes, static_part_bytes=cfg.static_part_bytes,
                         overlay_bytes=cfg.overlay_bytes, decompose=cfg.decompose,
                         mobile_memory_bytes=cfg.memory_mib << 20)


def make_controller(trace: Trace, bs_map: dict[str, str], nodes: list[str], cfg: ReplayConfig,
                    policy: str, calibration: Calibration | None = None,
                    clock: Clock = time.monotonic) -> Controller:
    """The live engine for this trace: its base stations, every user's devices (the car's
    GPS carrying r_data), T_BS fitted on the trace, wall time compressed by the speedup."""
    mme = Mme()
    for bs, node in bs_map.items():
        mme.add_bs(BaseStation(bs, node))
    rates: dict[str, float] = {}
    for user, devs in plan_devices(trace.users, cfg.roaming_users).items():
        for dev in devs.all:
            mme.register(dev, user)
        rates.update(device_rates(devs, cfg.r_data_bps, cfg.device_hz))
    places = node_minutes(trace, bs_map, nodes)
    dwell = ModelDwell(fit_dwell(places, len(nodes)), {u: i for i, u in enumerate(trace.users)},
                       {n: i for i, n in enumerate(nodes)}, cfg.minute_s, 0.0, trace.n_minutes)
    return Controller(make_params(cfg, policy), TmigCache(calibration), dwell, mme, clock=clock,
                      proxy_memory_bytes=cfg.memory_mib << 20, rates=rates)


# ----------------------------------------------------------------------------- streams


def stream_argv(enter: list[str], to: str, rate: float, subnet: str, bridge: str) -> list[str]:
    return [*enter, sys.executable, "-m", "orchestrator.edge.scenario", "stream", "--to", to,
            "--rate", str(rate), "--subnet", subnet, "--bridge", bridge]


def stream_main(argv: list[str]) -> int:
    """UDP at a fixed rate to a lab address (a device stream's bytes), until killed."""
    ap = argparse.ArgumentParser(prog="stream")
    ap.add_argument("--to", required=True)
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--subnet", required=True)
    ap.add_argument("--bridge", required=True)
    args = ap.parse_args(argv)
    policy = NetworkPolicy(labs=(LabNetwork(ipaddress.IPv4Network(args.subnet), args.bridge),))
    target = check_destination(args.to, policy)
    payload = os.urandom(1400)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    start, sent = time.monotonic(), 0
    while True:
        due = (time.monotonic() - start) * args.rate
        while sent < due:
            try:
                sock.sendto(payload, (target, 9))
            except OSError:
                pass  # e.g. ENOBUFS or no neighbour yet: the bytes did not go out
            sent += len(payload)
        time.sleep(0.005)


@dataclass
class Streams:
    """One bulk stream process per user, from the namespace of the node the user's car is
    behind to the proxy serving the car. Moved from the replay loop (a roam) and from
    worker threads (a handover changed the serving proxy), hence the lock; once stopped,
    stays stopped (an action finishing after the trace's end starts nothing)."""

    enter: Callable[[str], list[str]]
    subnet: str
    bridge: str
    rate: float
    log: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    current: dict[str, tuple[str, str]] = field(default_factory=dict)  # user → (node, to)
    closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def move(self, user: str, node: str | None = None, to: str | None = None) -> None:
        """(Re)start a user's stream from `node` to address `to` (None: as now); nothing
        happens when neither changes."""
        with self._lock:
            old = self.current.get(user)
            node = node or (old[0] if old else None)
            to = to or (old[1] if old else None)
            if self.closed or node is None or to is None or old == (node, to):
                return
            self._stop(user)
            env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
            with self.log.open("ab") as log:
                self.procs[user] = subprocess.Popen(
                    stream_argv(self.enter(node), to, self.rate, self.subnet, self.bridge),
                    cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            self.current[user] = (node, to)

    def _stop(self, user: str) -> None:
        proc = self.procs.pop(user, None)
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        with self._lock:
            self.closed = True
            for user in list(self.procs):
                self._stop(user)


# ----------------------------------------------------------------------------- the replay


@dataclass
class LabHooks:
    """What the replay needs from the lab: core counters, a namespace entry argv, and each
    node's network namespace path (where a device's radio is)."""

    core_bytes: Callable[[], dict[str, dict[str, int]]]
    enter: Callable[[str], list[str]]
    netns: Callable[[str], str]
    subnet: str
    bridge: str
    # The SDN core's per-class counters ({class: {bytes, packets}}); None: no such core.
    core_classes: Callable[[], dict[str, dict[str, int]] | None] | None = None


@dataclass
class Replay:
    session: FleetSession
    store: Store
    state_dir: Path
    lab: LabHooks
    trace: Trace
    bs_map: dict[str, str]
    cfg: ReplayConfig
    calibration: Calibration | None = None
    clock: Clock = time.monotonic
    sleep: Sleep = time.sleep

    @property
    def nodes(self) -> list[str]:
        return sorted(self.session.fleet.nodes)

    @property
    def plan(self) -> dict[str, UserDevices]:
        return plan_devices(self.trace.users, self.cfg.roaming_users)

    def home(self, user: str) -> str:
        """The node of the user's first BS: the proxy's and the home device's."""
        return self.bs_map[self.trace.bs[self.trace.users.index(user)][0]]

    def controller(self, policy: str) -> Controller:
        return make_controller(self.trace, self.bs_map, self.nodes, self.cfg, policy,
                               self.calibration, self.clock)

    def replica_nodes(self, user_index: int) -> list[str]:
        places = node_minutes(self.trace, self.bs_map, self.nodes)[user_index]
        minutes = {n: float((places == i).sum()) for i, n in enumerate(self.nodes)}
        return top_k_nodes(minutes, self.cfg.replicas)

    def run(self, policy: str) -> dict[str, Any]:
        if policy not in POLICIES:
            raise UserError(f"unknown policy {policy!r}; expected one of {POLICIES}")
        replicas = ReplicaService(self.session, self.store, self.state_dir,
                                  self.cfg.static_part_bytes)
        replicas.prepare_nodes()
        world = DeviceWorld(self.session, self.store, self.state_dir, self.plan,
                            self.lab.netns, self.lab.enter, self.lab.subnet, self.lab.bridge,
                            self.cfg.device_hz, self.state_dir / "scenario-devices")
        world.register()
        streams = Streams(self.lab.enter, self.lab.subnet, self.lab.bridge,
                          self.cfg.r_data_bps, self.state_dir / "scenario-streams.log")
        try:
            return self._run(policy, replicas, streams, world)
        finally:
            streams.stop_all()
            world.stop()
            self._cleanup(replicas)

    def _run(self, policy: str, replicas: ReplicaService, streams: Streams,
             world: DeviceWorld) -> dict[str, Any]:
        ctl = self.controller(policy)
        applier = ReplayApplier(self.session, self.state_dir, policy == "dynamic+replicas",
                                self.cfg.static_part_bytes,
                                frozenset(proxy_name(u) for u in self.trace.users),
                                self.cfg.boot_wait_s)
        plane = ControlPlane(ctl, applier, self.store, clock=self.clock, resync=self._resync)
        applier.epoch = lambda user: plane.failures.get(user, 0)
        applier.on_done = lambda a, r: self._done(plane, streams, a, r)
        addresses = self._create_vms(replicas, policy)
        world.start({u: self.home(u) for u in self.trace.users})
        first_event = max((e["id"] for e in self.store.events("decision")), default=0)
        before_nodes, before_classes = self.lab.core_bytes(), self._core_classes()
        t0 = self.clock()
        timeline: dict[str, list[tuple[float, int]]] = {n: [] for n in self.nodes}
        self._timeline_place(timeline, ctl, 0.0)
        try:
            rows = self._play(plane, streams, world, addresses, t0, timeline)
            self._wait_until(t0 + self.trace.n_minutes * self.cfg.minute_s)
            streams.stop_all()
            wall = self.clock() - t0
            outcomes = applier.wait()
        finally:  # nothing may still run when the VMs are cleaned up
            applier.close(cancel=True)
        after_nodes, after_classes = self.lab.core_bytes(), self._core_classes()
        devices = world.finish()
        summary = self._summary(policy, core_total(after_nodes) - core_total(before_nodes),
                                wall, outcomes, rows, first_event, timeline)
        summary["devices"], summary["records"] = devices, device_summary(devices)
        summary["core_bytes_by_node"] = counter_deltas(after_nodes, before_nodes)
        if before_classes is not None and after_classes is not None:
            # the paper's metric per class: raw streams, metadata, migration, control
            summary["core_bytes_by_class"] = counter_deltas(after_classes, before_classes)
        return summary

    def _core_classes(self) -> dict[str, dict[str, int]] | None:
        """The core's per-class counters now, None without an SDN core (or its controller)."""
        if self.lab.core_classes is None:
            return None
        try:
            return self.lab.core_classes()
        except OrchestratorError:
            return None

    def _play(self, plane: ControlPlane, streams: Streams, world: DeviceWorld,
              addresses: dict[str, str], t0: float,
              timeline: dict[str, list[tuple[float, int]]]) -> list[dict[str, Any]]:
        """The trace's minutes: radios move, then their location update goes to the
        engine; the car's bulk stream follows the car. Returns the decisions' rows."""
        rows: list[dict[str, Any]] = []
        for minute, user, bs in roam_schedule(self.trace):
            self._wait_until(t0 + minute * self.cfg.minute_s)
            node, devs = self.bs_map[bs], self.plan[user]
            if minute == 0:
                update = first_update(devs, bs, self.clock() - t0)
            else:
                world.roam(user, node)
                update = roam_update(devs, bs, self.clock() - t0)
            rows += [decision_row(minute, event) for event in plane.handle(update)]
            streams.move(user, node, addresses[user] if minute == 0 else None)
            self._timeline_place(timeline, plane.controller, self.clock() - t0)
        return rows

    def _done(self, plane: ControlPlane, streams: Streams, action: Action,
              result: dict[str, Any]) -> None:
        """In the worker, after an action: a failure goes back to the engine; a handover
        that moved the car (or made the parts one) points its bulk stream at the proxy
        serving it now."""
        if not succeeded(result):
            if result.get("status") != "skipped":
                plane.report_failure(action)
            return
        moved_car = self.plan[action.user].gps in action.devices or action.kind == "compose"
        if action.kind in HANDOVERS and action.into is not None and moved_car:
            with contextlib.closing(open_store(self.state_dir)) as store:
                record = store.vm(action.into)
            if record is not None and record.address:
                streams.move(action.user, to=record.address)

    def _resync(self, user: str) -> list[Proxy] | None:
        """The engine's view of a user as recorded (any thread: a store of its own)."""
        with contextlib.closing(open_store(self.state_dir)) as store:
            return proxies_from_store(store, self.cfg.memory_mib << 20).get(user)

    def _create_vms(self, replicas: ReplicaService, policy: str) -> dict[str, str]:
        """Define and start the proxies one by one (addresses are handed out from the
        records: concurrent creation would hand one address out twice), then wait for
        their boots in parallel (TCG boots take seconds)."""
        addresses = {}
        for i, (user, row) in enumerate(zip(self.trace.users, self.trace.bs, strict=True)):
            if policy == "dynamic+replicas":
                replicas.place_base(user, self.replica_nodes(i))
            record = replicas.create_vm(proxy_name(user), self.bs_map[row[0]], user,
                                        self.cfg.memory_mib, wait_s=0)
            assert record.address is not None
            addresses[user] = record.address
        # NOTE: the signing clients are built here, in the thread that owns the store
        # (SQLite), and only their waits run in the pool.
        vms = VmService(self.session, self.store)
        agents = [vms.agent(proxy_name(user)) for user in addresses]
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda agent: agent.wait_ready(90.0), agents))
        return addresses

    def _timeline_place(self, timeline: dict[str, list[tuple[float, int]]], ctl: Controller,
                        t: float) -> None:
        count = {n: 0 for n in self.nodes}
        for ps in list(ctl.proxies.values()):
            for p in ps:
                count[p.node] += 1
        for node, n in count.items():
            timeline[node].append((t, n))

    def _wait_until(self, deadline: float) -> None:
        left = deadline - self.clock()
        if left > 0:
            self.sleep(left)

    def _summary(self, policy: str, core: int, wall: float,
                 outcomes: list[tuple[Action, dict[str, Any]]], rows: list[dict[str, Any]],
                 first_event: int, timeline: dict[str, list[tuple[float, int]]]) -> dict[str, Any]:
        migrations = [r for a, r in outcomes if a.kind == "migrate"]
        done = [r for r in migrations if r.get("status") == "completed"]
        verdicts: dict[str, int] = {}
        for e in self.store.events("decision"):
            if e["id"] > first_event:
                verdicts[e["data"]["verdict"]] = verdicts.get(e["data"]["verdict"], 0) + 1
        energy = self._energy(timeline, wall)
        for node, e in energy.items():
            self.store.add_event("energy", node, {"policy": policy, **e})
        statuses = [r.get("status") for _a, r in outcomes]
        return {"policy": policy, "core_bytes": core, "wall_s": round(wall, 2),
                "migrations": len(done), "failed_migrations": len(migrations) - len(done),
                "migration_bytes": sum(int(r.get("transferred_bytes") or 0) for r in done),
                "incremental_migrations": sum(r.get("storage") == "incremental" for r in done),
                "migration_ids": [r.get("id", r.get("migration_id")) for r in migrations],
                "decompositions": statuses.count("decomposed"),
                "compositions": statuses.count("composed"),
                "failed_actions": [{"verdict": a.kind, "user": a.user, **r} for a, r in outcomes
                                   if not succeeded(r)],
                "decisions": verdicts,
                "actions": with_outcomes(rows, [r for _a, r in outcomes]),
                "energy": energy}

    def _energy(self, timeline: dict[str, list[tuple[float, int]]],
                wall: float) -> dict[str, dict[str, float]]:
        """On-grid energy with a solar supply per node (phases differ) and the VM count."""
        model, out = PowerModel(), {}
        for i, node in enumerate(self.nodes):
            trace = GreenTrace.solar(60.0, max(wall, 1.0), phase=i / len(self.nodes))
            per_vm = model.vm_w(1, self.cfg.memory_mib)
            changes = [(t, model.idle_w + n * per_vm) for t, n in timeline[node]]
            totals = account(intervals_from_timeline(node, changes, wall, trace)).get(node)
            out[node] = {"green_joules": round(totals.green_joules, 1) if totals else 0.0,
                         "grid_joules": round(totals.grid_joules, 1) if totals else 0.0}
        return out

    def _cleanup(self, replicas: ReplicaService) -> None:
        """Every VM the replay made (proxies and mobile parts), their overlays and the
        users' replicas; the directory then names nothing that is gone."""
        proxies = [proxy_name(u) for u in self.trace.users]
        for vm in [n for p in proxies for n in (p, f"{p}-m")]:
            for guest in self.session.locate(vm):
                with contextlib.suppress(OrchestratorError):
                    guest.remove()
            self.store.remove_vm(vm)
            self.store.remove_app_models(vm)
        for vm in proxies:
            replicas.cleanup(vm, list(self.trace.users))
        ProxyService(self.session, self.store, self.state_dir).write_directory()


def config_dict(cfg: ReplayConfig) -> dict[str, Any]:
    return {**asdict(cfg), "minute_s": cfg.minute_s}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "stream":
        raise SystemExit(stream_main(sys.argv[2:]))
    raise SystemExit("usage: python -m orchestrator.edge.scenario stream --to ADDR ...")
