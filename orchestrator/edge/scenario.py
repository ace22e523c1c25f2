"""Live replay of a mobility trace against the lab: real proxy VMs, streams, migrations.

Why this shape: the paper's claim is about bytes on the core, so the replay measures them
where they flow — the lab's root-side core veth counters — while the very engine that
serves live location updates (`model.controller`, same dwell estimator and Eq. 1 as the
simulator) decides. Per policy:

1. each user gets a proxy VM (128 MiB, a qcow2 overlay on the user's static part) at the
   fog node of their first BS; for `dynamic+replicas` the static part is also pre-placed
   at the user's top-k fog nodes (before the counters are read: replicas are placed
   off-peak);
2. each user's device stream (UDP at r_data, from inside the namespace of the fog node
   their BS maps to, to the proxy VM's address) runs while trace minutes tick by, each
   lasting 60 / speedup wall seconds; a stream crosses the core exactly when the proxy is
   elsewhere;
3. roams go through the MME and the engine; migrations run in worker threads (storage +
   memory, incremental onto replicas), uncapped (see the TCG note in edge/replicas.py);
4. core bytes = Σ bytes the nodes sent into the core between the start and the end
   (after the last migration); beside them, the simulator's prediction for the same trace.

Loops take their clock and sleep as parameters. The per-user stream runs in a separate
process (`python -m orchestrator.edge.scenario stream …`), netguard-checked.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.edge.control import ControlPlane
from orchestrator.edge.replicas import ReplicaService
from orchestrator.errors import OrchestratorError, UserError
from orchestrator.fog.guest_agent import GuestAgent
from orchestrator.fog.session import FleetSession
from orchestrator.model import dwell as dwell_model
from orchestrator.model import simulation
from orchestrator.model.controller import Action, Controller, ControlParams, ModelDwell, TmigCache
from orchestrator.model.mme import BaseStation, LocationUpdate, Mme
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
    r_data_bps: float = 3e6  # per user stream, wall bytes/s
    r_mig_bps: float = 50 * 2**20  # measured on the unshaped lab core: ~84 MB in ~2 s
    epsilon_bytes: float = 500e3 / 8
    memory_mib: int = 128
    static_part_bytes: int = 32 * 2**20
    overlay_bytes: int = 2**20
    replicas: int = 4

    @property
    def minute_s(self) -> float:
        return 60.0 / self.speedup


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


def simulate(places: np.ndarray, n_nodes: int, cfg: ReplayConfig, t_mig_s: float,
             t_mig_replica_s: float) -> dict[str, dict[str, float | int]]:
    """The trace simulator's core bytes for the same trace and rates (wall units)."""
    f = cfg.minute_s / 60.0  # wall seconds per trace second
    visits = dwell_model.visits_from_minutes(places)
    predicted = dwell_model.predict(fit_dwell(places, n_nodes), visits)
    prep = simulation.prepare(visits, predicted, max_replicas=max(cfg.replicas, 1))
    out = {}
    for policy, sim_policy in (("static", "static"), ("dynamic", "dynamic"),
                               ("dynamic+replicas", "replicas")):
        sc = simulation.Scenario(sim_policy, r_data_bps=cfg.r_data_bps * f,
                                 t_mig_s=t_mig_s / f, r_mig_bps=cfg.r_mig_bps * f,
                                 epsilon_bytes=cfg.epsilon_bytes, replicas=cfg.replicas,
                                 replica_t_mig_s=t_mig_replica_s / f)
        out[policy] = simulation.run(prep, sc).as_dict()
    return out


def core_total(counters: dict[str, dict[str, int]]) -> int:
    """Bytes that entered the core (each crossing counted once, at its sender)."""
    return sum(c["to_core"] for c in counters.values())


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
    """One stream process per user, started in the namespace of the user's current node."""

    enter: Callable[[str], list[str]]
    subnet: str
    bridge: str
    rate: float
    log: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def move(self, user: str, node: str, to: str) -> None:
        self.stop(user)
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        with self.log.open("ab") as log:
            self.procs[user] = subprocess.Popen(
                stream_argv(self.enter(node), to, self.rate, self.subnet, self.bridge),
                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def stop(self, user: str) -> None:
        proc = self.procs.pop(user, None)
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for user in list(self.procs):
            self.stop(user)


# ----------------------------------------------------------------------------- applier


@dataclass
class ReplayApplier:
    """Migrations in worker threads (one store connection each); placement was done."""

    session: FleetSession
    state_dir: Path
    use_replicas: bool
    size_bytes: int
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(3))
    futures: list[Future[dict[str, Any]]] = field(default_factory=list)
    locks: dict[str, threading.Lock] = field(default_factory=dict)
    on_done: Callable[[Action, dict[str, Any]], None] | None = None

    def apply(self, action: Action) -> dict[str, Any]:
        if action.kind != "migrate":
            return {"status": "nothing to do" if action.kind != "place" else "placed"}
        lock = self.locks.setdefault(action.proxy, threading.Lock())
        self.futures.append(self.pool.submit(self._migrate, action, lock))
        return {"status": "submitted"}

    def _migrate(self, action: Action, lock: threading.Lock) -> dict[str, Any]:
        assert action.destination is not None
        with lock:
            store = open_store(self.state_dir)
            try:
                svc = ReplicaService(self.session, store, self.state_dir, self.size_bytes)
                result = svc.migrate(action.proxy, action.destination, action.user,
                                     self.use_replicas)
            except OrchestratorError as exc:
                result = {"status": "failed", "error": str(exc)}
            finally:
                store.close()
        if self.on_done:
            self.on_done(action, result)
        return result

    def wait(self) -> list[dict[str, Any]]:
        return [f.result() for f in self.futures]


# ----------------------------------------------------------------------------- the replay


@dataclass
class LabHooks:
    """What the replay needs from the lab: core counters and a namespace entry argv."""

    core_bytes: Callable[[], dict[str, dict[str, int]]]
    enter: Callable[[str], list[str]]
    subnet: str
    bridge: str


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

    def params(self, policy: str) -> ControlParams:
        c = self.cfg
        return ControlParams(policy=policy, r_data_bps=c.r_data_bps, r_mig_bps=c.r_mig_bps,
                             epsilon_bytes=c.epsilon_bytes,
                             static_part_bytes=c.static_part_bytes,
                             overlay_bytes=c.overlay_bytes, decompose=False)

    def controller(self, policy: str) -> Controller:
        mme = Mme()
        for bs, node in self.bs_map.items():
            mme.add_bs(BaseStation(bs, node))
        for user in self.trace.users:
            mme.register(f"{user}-dev", user)
        places = node_minutes(self.trace, self.bs_map, self.nodes)
        dwell = ModelDwell(fit_dwell(places, len(self.nodes)),
                           {u: i for i, u in enumerate(self.trace.users)},
                           {n: i for i, n in enumerate(self.nodes)}, self.cfg.minute_s,
                           0.0, self.trace.n_minutes)
        return Controller(self.params(policy), TmigCache(self.calibration), dwell, mme,
                          clock=self.clock, proxy_memory_bytes=self.cfg.memory_mib << 20)

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
        vms = [f"px-{u}" for u in self.trace.users]
        streams = Streams(self.lab.enter, self.lab.subnet, self.lab.bridge,
                          self.cfg.r_data_bps, self.state_dir / "scenario-streams.log")
        try:
            return self._run(policy, replicas, streams)
        finally:
            streams.stop_all()
            self._cleanup(vms, replicas)

    def _run(self, policy: str, replicas: ReplicaService, streams: Streams) -> dict[str, Any]:
        ctl = self.controller(policy)
        applier = ReplayApplier(self.session, self.state_dir, policy == "dynamic+replicas",
                                self.cfg.static_part_bytes)
        plane = ControlPlane(ctl, applier, self.store, clock=self.clock)
        applier.on_done = lambda a, r: self._done(plane, a, r)
        addresses = self._create_vms(replicas, policy)
        first_event = max((e["id"] for e in self.store.events("decision")), default=0)
        before_nodes = self.lab.core_bytes()
        before = core_total(before_nodes)
        t0 = self.clock()
        timeline: dict[str, list[tuple[float, int]]] = {n: [] for n in self.nodes}
        self._timeline_place(timeline, ctl, 0.0)
        for minute, user, bs in roam_schedule(self.trace):
            self._wait_until(t0 + minute * self.cfg.minute_s)
            plane.handle(LocationUpdate(f"{user}-dev", bs, self.clock() - t0))
            streams.move(user, self.bs_map[bs], addresses[user])
            self._timeline_place(timeline, ctl, self.clock() - t0)
        self._wait_until(t0 + self.trace.n_minutes * self.cfg.minute_s)
        streams.stop_all()
        wall = self.clock() - t0
        results = applier.wait()
        applier.pool.shutdown()
        after_nodes = self.lab.core_bytes()
        after = core_total(after_nodes)
        summary = self._summary(policy, after - before, wall, results, first_event, timeline)
        summary["core_bytes_by_node"] = {
            n: {k: after_nodes[n][k] - before_nodes[n][k] for k in after_nodes[n]}
            for n in after_nodes if n in before_nodes}
        return summary

    def _done(self, plane: ControlPlane, action: Action, result: dict[str, Any]) -> None:
        if result.get("status") != "completed":
            with plane._lock:
                plane.controller.failed(action)

    def _create_vms(self, replicas: ReplicaService, policy: str) -> dict[str, str]:
        """Define and start the proxies one by one (addresses are handed out from the
        records: concurrent creation would hand one address out twice), then wait for
        their boots in parallel (TCG boots take seconds)."""
        addresses = {}
        for i, (user, row) in enumerate(zip(self.trace.users, self.trace.bs, strict=True)):
            if policy == "dynamic+replicas":
                replicas.place_base(user, self.replica_nodes(i))
            record = replicas.create_vm(f"px-{user}", self.bs_map[row[0]], user,
                                        self.cfg.memory_mib, wait_s=0)
            assert record.address is not None
            addresses[user] = record.address
        policy_net = self.session.fleet.policy
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda a: GuestAgent(a, policy_net).wait_ready(90.0),
                          addresses.values()))
        return addresses

    def _timeline_place(self, timeline: dict[str, list[tuple[float, int]]], ctl: Controller,
                        t: float) -> None:
        count = {n: 0 for n in self.nodes}
        for ps in ctl.proxies.values():
            for p in ps:
                count[p.node] += 1
        for node, n in count.items():
            timeline[node].append((t, n))

    def _wait_until(self, deadline: float) -> None:
        left = deadline - self.clock()
        if left > 0:
            self.sleep(left)

    def _summary(self, policy: str, core: int, wall: float, results: list[dict[str, Any]],
                 first_event: int, timeline: dict[str, list[tuple[float, int]]]) -> dict[str, Any]:
        done = [r for r in results if r.get("status") == "completed"]
        verdicts: dict[str, int] = {}
        for e in self.store.events("decision"):
            if e["id"] > first_event:
                verdicts[e["data"]["verdict"]] = verdicts.get(e["data"]["verdict"], 0) + 1
        energy = self._energy(timeline, wall)
        for node, e in energy.items():
            self.store.add_event("energy", node, {"policy": policy, **e})
        return {"policy": policy, "core_bytes": core, "wall_s": round(wall, 2),
                "migrations": len(done), "failed_migrations": len(results) - len(done),
                "migration_bytes": sum(int(r.get("transferred_bytes") or 0) for r in done),
                "incremental_migrations": sum(r.get("storage") == "incremental" for r in done),
                "migration_ids": [r.get("id") for r in results],
                "decisions": verdicts, "energy": energy}

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

    def _cleanup(self, vms: list[str], replicas: ReplicaService) -> None:
        for vm in vms:
            for guest in self.session.locate(vm):
                try:
                    guest.remove()
                except OrchestratorError:
                    pass
            self.store.remove_vm(vm)
        replicas_users = [vm.removeprefix("px-") for vm in vms]
        for vm in vms:
            replicas.cleanup(vm, replicas_users)


def config_dict(cfg: ReplayConfig) -> dict[str, Any]:
    return {**asdict(cfg), "minute_s": cfg.minute_s}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "stream":
        raise SystemExit(stream_main(sys.argv[2:]))
    raise SystemExit("usage: python -m orchestrator.edge.scenario stream --to ADDR ...")
