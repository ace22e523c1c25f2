"""`orchestrator migrate` as a use case: check, lock, predict, migrate, verify, record.

Refuses bad requests before anything moves (unknown VM or node, the node it is on, not
enough memory at the destination, a migration of the same VM already running). Whatever
happens next, the migration is recorded with its parameters, samples and outcome, and the
VM's placement is verified afterwards on every node.
"""

from __future__ import annotations

import fcntl
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any, Protocol

from orchestrator.edge.capacity import MIB, free_vm_memory_bytes
from orchestrator.edge.reconcile import migration_lease
from orchestrator.errors import OrchestratorError, UserError
from orchestrator.fog.guest_agent import GuestAgent
from orchestrator.fog.hypervisor import Guest
from orchestrator.fog.jobstats import JobSample, footprint_bytes
from orchestrator.fog.migration import MigrationOutcome, MigrationRequest, run_migration
from orchestrator.fog.node import FogNode, validate_name
from orchestrator.fog.session import FleetSession
from orchestrator.model.live import LiveEta, eta_summary
from orchestrator.model.precopy import Calibration, MigrationInputs, Prediction, predict
from orchestrator.store import Store

DEFAULT_DOWNTIME_S = 0.3  # QEMU's default downtime limit
# A migration's frames on the core, both ways, are ~7 % more than the bytes QEMU's cap counts:
# TCP/IP/Ethernet headers on ~1448-byte segments plus the ACKs coming back through the same
# meter (SDN lab: class bytes 6.4-6.5 % above the record's transferred_bytes).
WIRE_OVERHEAD = 1.07


def metered_bandwidth_mib_s(rate_mbit: float) -> int:
    """The migration cap (whole MiB/s, as libvirt takes it) just under a core meter of
    `rate_mbit`: the migration's frames then fit the meter, which only guards. Uncapped, the
    meter polices QEMU's line-rate slices and TCP gets ~35 % of the rate (see meter_band).
    80 Mbit/s gives 8 MiB/s; below ~9 Mbit/s the cap stays at libvirt's least, 1 MiB/s."""
    if rate_mbit <= 0:
        raise UserError(f"migration rate must be > 0 Mbit/s, got {rate_mbit}")
    return max(1, math.floor(rate_mbit * 1e6 / 8 / WIRE_OVERHEAD / 2**20))


def core_meter_mbit(nodes: Iterable[FogNode]) -> float | None:
    """The tightest migration meter the nodes' facts name (a lab's SDN core), or None."""
    rates = [float(rate) for node in nodes if (rate := node.facts.get("migration_mbit"))]
    return min(rates) if rates else None


def capped_request(request: MigrationRequest,
                   nodes: Iterable[FogNode]) -> tuple[MigrationRequest, str | None]:
    """The request with its bandwidth (r_mig), and where that came from: the user's
    --bandwidth ("request"), else just under the core's migration meter ("core meter"),
    else None (uncapped)."""
    if request.bandwidth_mib_s is not None:
        return request, "request"
    rate = core_meter_mbit(nodes)
    if rate is None:
        return request, None
    return replace(request, bandwidth_mib_s=metered_bandwidth_mib_s(rate)), "core meter"


class MigrationObserver(Protocol):
    """Who watches a migration: told the prediction first, then every job-stats sample."""

    def started(self, inputs: MigrationInputs | None, prediction: Prediction | None) -> None: ...

    def sample(self, sample: JobSample) -> None: ...


def predictor_inputs(request: MigrationRequest, guest: dict[str, Any],
                     observed_bps: float | None) -> MigrationInputs | None:
    """The predictor's inputs, or None when no bandwidth is known (uncapped, no history)."""
    bandwidth = (request.bandwidth_mib_s * 2**20 if request.bandwidth_mib_s else observed_bps)
    if not bandwidth:
        return None
    downtime_s = request.downtime_ms / 1000 if request.downtime_ms else DEFAULT_DOWNTIME_S
    return MigrationInputs(memory_bytes=guest["memory_bytes"],
                           dirty_rate_pages_s=float(guest["dirty_rate_pages_s"] or 0),
                           bandwidth_bytes_s=float(bandwidth), downtime_limit_s=downtime_s,
                           working_set_bytes=guest["working_set_bytes"] or None,
                           footprint_bytes=guest.get("footprint_bytes"),
                           dirty_window_s=guest.get("dirty_rate_window_s"))


def guest_working_set(status: dict[str, Any]) -> int | None:
    """The writable working set the guest agent reports: its workload's buffer (or the
    dirtier's), None when it runs neither."""
    for key in ("workload", "dirty"):
        size = (status.get(key) or {}).get("working_set_bytes")
        if isinstance(size, int) and size > 0:
            return size
    return None


def live_tracker(inputs: MigrationInputs | None, prediction: Prediction | None,
                 calibration: Calibration | None) -> LiveEta | None:
    """The ETA and stall tracker, seeded with the prediction; None without inputs."""
    if inputs is None:
        return None
    live = LiveEta(inputs, calibration)
    if prediction is not None:
        live.seed(prediction.total_time_s)
    return live


def guest_workload(status: dict[str, Any]) -> str | None:
    """Which writer the guest runs: a workload family, "sweep" for the dirtier, or None."""
    kind = (status.get("workload") or {}).get("kind")
    if isinstance(kind, str) and kind != "none":
        return kind
    return "sweep" if (status.get("dirty") or {}).get("pages_per_s") else None


def prediction_figures(prediction: Prediction | None,
                       measured_ms: int | None) -> dict[str, float | None]:
    """The prediction next to the measurement, so accuracy is tracked on every migration."""
    predicted_ms = (prediction.total_time_s * 1000
                    if prediction and prediction.converges else None)
    error = (abs(predicted_ms - measured_ms) / measured_ms * 100
             if predicted_ms is not None and measured_ms else None)
    return {"predicted_total_time_ms": None if predicted_ms is None else round(predicted_ms),
            "prediction_error_pct": None if error is None else round(error, 2)}


@contextmanager
def vm_lock(state_dir: Path, vm: str) -> Iterator[None]:
    """One migration per VM at a time, across processes; released if the process dies."""
    lock_dir = state_dir / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{vm}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"a migration of {vm!r} is already running") from None
        yield


DEFAULT_MAX_PER_NODE = 2


@contextmanager
def node_slots(state_dir: Path, nodes: list[str], limit: int, wait_s: float = 600.0,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> Iterator[None]:
    """At most `limit` migrations touching a node at once, across processes (like Nova's
    max_concurrent_live_migrations): a migration waits for a free slot on its source and its
    destination, taken in name order so two migrations never wait on each other."""
    if limit < 1:
        raise UserError(f"--max-per-node must be >= 1, got {limit}")
    lock_dir = state_dir / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    held: list[IO[str]] = []
    deadline = clock() + wait_s
    try:
        for node in sorted(set(nodes)):
            held.append(_take_slot(lock_dir, node, limit, deadline, clock, sleep))
        yield
    finally:
        for handle in held:
            handle.close()  # closing releases the flock


def _take_slot(lock_dir: Path, node: str, limit: int, deadline: float,
               clock: Callable[[], float], sleep: Callable[[float], None]) -> IO[str]:
    while True:
        for slot in range(limit):
            handle = open(lock_dir / f"node-{node}-{slot}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return handle
            except BlockingIOError:
                handle.close()
        if clock() > deadline:
            raise OrchestratorError(f"no free migration slot on {node} (limit {limit})")
        sleep(0.2)


@contextmanager
def inbound_reservation(state_dir: Path, node: str, vm: str, memory: int,
                        admit: Callable[[dict[str, int]], None]) -> Iterator[None]:
    """Hold `memory` bytes at `node` for `vm` while it migrates there, across processes.

    Two migrations into a node with room for one each saw the room free before either's
    incoming domain existed, and both went ahead. Now admission is serialised per node
    (an exclusive flock): `admit` sees the memory every live reservation holds (vm → bytes)
    and raises to refuse; an admitted migration's reservation file stays flocked by its
    process until the migration has ended, so a dead process's reservation lapses.
    """
    lock_dir = state_dir / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    mine = lock_dir / f"inbound-{node}-{vm}.json"
    with open(lock_dir / f"admit-{node}.lock", "w") as gate:
        fcntl.flock(gate, fcntl.LOCK_EX)
        admit(_live_reservations(lock_dir, node))
        handle = open(mine, "w")
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(str(memory))
        handle.flush()
    try:
        yield
    finally:
        mine.unlink(missing_ok=True)
        handle.close()


def _live_reservations(lock_dir: Path, node: str) -> dict[str, int]:
    """vm → bytes of every reservation at `node` whose process still holds it."""
    held: dict[str, int] = {}
    for path in lock_dir.glob(f"inbound-{node}-*.json"):
        with open(path) as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # held: a live migration's promise
                held[path.stem.removeprefix(f"inbound-{node}-")] = int(probe.read() or 0)
                continue
        path.unlink(missing_ok=True)  # its process died: the promise lapsed
    return held


@dataclass
class MigrationService:
    session: FleetSession
    store: Store
    state_dir: Path
    calibration: Calibration | None = None
    max_per_node: int = DEFAULT_MAX_PER_NODE
    # r_dir is measured by the source hypervisor over this many seconds before migrating
    # (0: take the guest agent's figure instead, e.g. where every second counts).
    dirty_rate_window_s: int = 1
    # Told (vm, destination) at the switch-over, when the source pauses; e.g. the SDN
    # controller moves the VM's flows then instead of waiting for MAC learning.
    on_switchover: Callable[[str, str], object] | None = None

    def migrate(self, request: MigrationRequest, observer: MigrationObserver | None = None,
                cancel: threading.Event | None = None) -> dict[str, Any]:
        """Migrate one VM; `cancel`, set from another thread or a signal handler, aborts the
        job and leaves the VM on the source with a `cancelled` record."""
        validate_name("VM", request.vm)
        destination = self.session.fleet.node(request.destination)
        if destination.uri.startswith("qemu+tls://"):
            # Real hosts talk TLS to libvirt: the memory stream gets QEMU's TLS too.
            request = replace(request, tls=True)
        # The lease tells every other process's reconcile that this migration is ours.
        with vm_lock(self.state_dir, request.vm), \
                migration_lease(self.store, request.vm, destination=destination.name):
            guest = self._running_guest(request.vm)
            if guest.node == destination.name:
                raise UserError(f"VM {request.vm!r} already runs on {destination.name}")
            # The cap and the prediction's r_mig are one figure: a lab core's meter sets it
            # when the user gave none.
            request, cap_from = capped_request(
                request, [self.session.fleet.node(guest.node), destination])
            with node_slots(self.state_dir, [guest.node, destination.name], self.max_per_node):
                return self._migrate(request, guest, observer, cap_from, cancel)

    def _migrate(self, request: MigrationRequest, guest: Guest,
                 observer: MigrationObserver | None,
                 cap_from: str | None = None,
                 cancel: threading.Event | None = None) -> dict[str, Any]:
        """Room check, prediction, record, the migration itself, verification."""
        destination = self.session.fleet.node(request.destination)
        memory = guest.memory_bytes()
        with inbound_reservation(self.state_dir, destination.name, request.vm, memory,
                                 lambda reserved: self._require_room(
                                     destination.name, request.vm, memory, reserved)):
            return self._migrate_admitted(request, guest, observer, cap_from, cancel, memory)

    def _require_room(self, node: str, vm: str, memory: int,
                      reserved: dict[str, int]) -> None:
        """The destination's room, less what migrations already admitted there will take
        (those whose incoming domain is not there yet: a defined one is counted already)."""
        present = {g.name for g in self.session.hypervisor(node).guests() if g.is_active()}
        pending = sum(m for other, m in reserved.items() if other != vm and other not in present)
        free = free_vm_memory_bytes(self.session, node) - pending
        if free < memory:
            raise UserError(f"{node} has not enough free memory for {vm} "
                            f"({memory // MIB} MiB needed, {max(free, 0) // MIB} MiB free, "
                            f"{pending // MIB} MiB of it promised to migrations on their "
                            "way): refused")

    def _migrate_admitted(self, request: MigrationRequest, guest: Guest,
                          observer: MigrationObserver | None, cap_from: str | None,
                          cancel: threading.Event | None, memory: int) -> dict[str, Any]:
        """Prediction, record, the migration itself, verification."""
        destination = self.session.fleet.node(request.destination)
        guest_figures = self._guest_figures(request, memory, guest)
        flag = self.calibration.qemu_mismatch(guest_figures.get("qemu_version")) \
            if self.calibration else None
        if flag:  # flagged in the record: the prediction below may not fit this QEMU
            guest_figures["calibration_flag"] = flag
        inputs = predictor_inputs(request, guest_figures, self._observed_bandwidth())
        prediction = self._predict(inputs)
        if observer:
            observer.started(inputs, prediction)
        record_id = self.store.start_migration(
            request.vm, guest.node, destination.name, {**asdict(request), **guest_figures},
            prediction.as_dict() if prediction else None, os.getpid())
        live = live_tracker(inputs, prediction, self.calibration)
        outcome = self._run(guest, request, self._sample_sink(record_id, observer), cancel,
                            live)
        return self._finish(record_id, request, guest.node, memory, outcome, prediction,
                            cap_from, live)

    def _settle(self, vm: str) -> tuple[list[str], list[str]]:
        """(nodes where the VM runs, nodes whose leftover copy was removed), from one scan.

        After a failed migration the destination may hold a paused incoming domain (e.g.
        when the core link died and the nodes could not agree); it must not outlive us. If
        nothing runs, every copy stays for reconcile to judge."""
        guests = self.session.locate(vm)
        running = [g for g in guests if g.is_running()]
        leftovers = [g for g in guests if g not in running] if running else []
        for guest in leftovers:
            guest.remove()
        return [g.node for g in running], [g.node for g in leftovers]

    def _gone_everywhere(self, vm: str) -> bool:
        """No node holds an active copy of the VM (running or paused), and every node
        answered: a VM paused mid-switch-over, or on a node that did not answer, is not
        lost."""
        guests = self.session.locate(vm)
        return not self.session.unreachable and not any(g.is_active() for g in guests)

    def _sample_sink(self, record_id: int,
                     observer: MigrationObserver | None) -> Callable[[JobSample], None]:
        """Every live sample goes to the record at once, then to the observer."""
        seq = iter(range(1 << 62))

        def sink(sample: JobSample) -> None:
            self.store.add_sample(record_id, next(seq), sample.as_dict())
            if observer:
                observer.sample(sample)
        return sink

    def _running_guest(self, vm: str) -> Guest:
        running = [g for g in self.session.locate(vm) if g.is_running()]
        if not running:
            raise UserError(f"unknown VM {vm!r}: it runs on no fog node")
        if len(running) > 1:
            nodes = ", ".join(g.node for g in running)
            raise OrchestratorError(f"VM {vm!r} runs on several nodes ({nodes}): reconcile first")
        return running[0]

    def _predict(self, inputs: MigrationInputs | None) -> Prediction | None:
        if inputs is None:
            return None
        try:
            return predict(inputs, self.calibration)
        except ValueError:
            return None  # e.g. a guest figure outside the model's domain: migrate unpredicted

    def _last_footprint(self, vm: str, memory: int) -> int | None:
        """The VM's non-zero memory as its last completed migration's round 0 saw it."""
        for record in self.store.migrations(vm=vm, status="completed", limit=1):
            final = (record["result"] or {}).get("final") or {}
            return footprint_bytes(final, self.store.samples(record["id"]), memory)
        return None

    def _observed_bandwidth(self) -> float | None:
        """Median stream rate of recent completed migrations: the best guess when uncapped."""
        rates = sorted(r["result"]["final"]["bandwidth_bps"]
                       for r in self.store.migrations(status="completed", limit=10)
                       if r["result"] and r["result"].get("final", {}).get("bandwidth_bps"))
        return float(rates[len(rates) // 2]) if rates else None

    def _guest_figures(self, request: MigrationRequest, memory: int,
                       guest: Guest | None = None) -> dict[str, Any]:
        """What is known about the guest before the migration starts: memory, the dirty
        rate the hypervisor measures (page sampling; the guest's own figure only when the
        hypervisor cannot measure), a working-set estimate and the non-zero footprint."""
        inputs: dict[str, Any] = {"memory_bytes": memory, "dirty_rate_pages_s": None,
                                  "dirty_rate_source": None, "working_set_bytes": None,
                                  "footprint_bytes": self._last_footprint(request.vm, memory)}
        if guest is not None and self.dirty_rate_window_s > 0:
            inputs.update(self._measured_dirty_rate(guest))
        record = self.store.vm(request.vm)
        if record and record.address:
            try:
                status = GuestAgent(record.address, self.session.fleet.policy,
                                    key=self.store.vm_key(request.vm)).status()
                inputs["working_set_bytes"] = guest_working_set(status)
                inputs["workload"] = guest_workload(status)
                if inputs["dirty_rate_pages_s"] is None:
                    inputs["dirty_rate_pages_s"] = status["dirty"].get("pages_per_s")
                    inputs["dirty_rate_source"] = "guest agent (set point)"
            except (OrchestratorError, KeyError, TypeError):
                pass  # the prediction then goes without the guest's own figures
        return inputs

    def _measured_dirty_rate(self, guest: Guest) -> dict[str, Any]:
        """r_dir and the QEMU version from the source hypervisor; {} (and a note in the
        record) when it cannot measure, e.g. too old a QEMU."""
        try:
            caps = self.session.hypervisor(guest.node).capabilities(guest)
        except OrchestratorError as exc:
            return {"dirty_rate_note": str(exc)}
        figures: dict[str, Any] = {"qemu_version": caps.qemu}
        try:
            rate = guest.measure_dirty_rate(caps, self.dirty_rate_window_s)
        except OrchestratorError as exc:
            return {**figures, "dirty_rate_note": str(exc)}
        return {**figures, "dirty_rate_pages_s": round(rate.pages_s(), 1),
                "dirty_rate_window_s": rate.window_s or float(self.dirty_rate_window_s),
                "dirty_rate_source": f"hypervisor {rate.mode}"}

    def _run(self, guest: Guest, request: MigrationRequest,
             on_sample: Callable[[JobSample], None] | None,
             cancel: threading.Event | None = None,
             live: LiveEta | None = None) -> MigrationOutcome:
        dest_hv = self.session.hypervisor(request.destination)
        with self._switchover_watch(guest, request) as fired:
            try:
                outcome = run_migration(guest, dest_hv, request, on_sample=on_sample,
                                        cancel=cancel, live=live)
            except OrchestratorError as exc:  # e.g. the downtime limit was refused
                outcome = MigrationOutcome("failed", [], None, 0.0, "none", str(exc))
        if self.on_switchover and outcome.status == "completed" and not fired.is_set():
            self.on_switchover(request.vm, request.destination)  # the event was missed
        return outcome

    @contextmanager
    def _switchover_watch(self, guest: Guest,
                          request: MigrationRequest) -> Iterator[threading.Event]:
        fired = threading.Event()
        if self.on_switchover is None:
            yield fired
            return
        hook = self.on_switchover

        def paused() -> None:
            fired.set()
            hook(request.vm, request.destination)

        source = self.session.hypervisor(guest.node)
        handle = source.on_migration_pause(guest, paused)
        try:
            yield fired
        finally:
            source.drop_event(handle)

    def _finish(self, record_id: int, request: MigrationRequest, source: str, memory: int,
                outcome: MigrationOutcome, prediction: Prediction | None,
                cap_from: str | None = None, live: LiveEta | None = None) -> dict[str, Any]:
        placement, leftovers = self._settle(request.vm)
        final = outcome.final.as_dict() if outcome.final else {}
        status, error = outcome.status, outcome.error
        expected = [request.destination] if status == "completed" else [source]
        if placement != expected:
            error = (f"{error + '; ' if error else ''}after the migration {request.vm} runs "
                     f"on {placement or 'no node'}, expected {expected}")
            status = "failed" if status == "completed" else status
        if not placement and self._gone_everywhere(request.vm):
            status = "lost"  # its QEMU died (source crash, power-off): no copy is left
        if len(placement) == 1:
            self.store.set_vm_node(request.vm, placement[0])
        result = {
            "id": record_id, "vm": request.vm, "source": source,
            "destination": request.destination, "status": status,
            "memory_bytes": memory, "bandwidth_mib_s": request.bandwidth_mib_s,
            "bandwidth_from": cap_from,
            "downtime_limit_ms": request.downtime_ms, "policy": request.policy,
            "timeout_action": outcome.action, "stalled": outcome.stall,
            "policy_applied_at_s": outcome.acted_at_s,
            "throttle_pct_max": max((s.throttle_pct for s in outcome.samples), default=0),
            "wall_time_ms": round(outcome.wall_s * 1000),
            "total_time_ms": final.get("total_time_ms"),
            "downtime_ms": final.get("downtime_ms"), "setup_time_ms": final.get("setup_time_ms"),
            "iterations": final.get("iterations"),
            "transferred_bytes": final.get("transferred_bytes"),
            "dirty_rate_pages_s": final.get("dirty_rate_pages_s",
                                            max((s.dirty_rate_pages_s for s in outcome.samples),
                                                default=0)),
            "final": final, "placement": placement, "removed_leftovers": leftovers,
            "error": error,
            **prediction_figures(prediction, final.get("total_time_ms")),
            "eta": eta_summary(live, outcome.wall_s) if live and live.history else None,
        }
        samples = [s.as_dict() for s in outcome.samples]
        self.store.finish_migration(record_id, status, result, samples, error)
        return {**result, "samples": samples}
