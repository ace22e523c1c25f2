"""The calibration campaign: a grid of real migrations, turned into a fitted predictor.

Why real migrations through `MigrationService`: each grid point is then an ordinary record
(parameters, job-stats samples, outcome, the prediction made before it), so the campaign is
auditable with `orchestrator migrations`, and the fit reads the same data any later
migration leaves behind. The campaign's record ids are logged as one `calibration` event,
so `calibrate report` judges exactly that campaign's held-out migrations.

Grid points are grouped by memory size: one VM per size travels back and forth between two
fog nodes while the in-guest dirtier is reset for each point; VMs are destroyed at the end,
even on failure. Non-converging points are expected: the stall detector aborts them (record
status "aborted" with `result["stalled"]`) and they count for the non-convergence accuracy.

What is read from a record (`measured_from_record`, pure):
    r_mig     median `memory_bps` of the live samples (the achieved stream rate); the cap
              when no sample carries one;
    r_dir     the rate the guest's dirtier was writing (the dirtier keeps it exactly), or
              QEMU's measured rate (median over iterations ≥ 2) if that is higher, e.g. an
              idle guest's own background. NOTE: QEMU counts a page dirtied twice in one
              sync period once, so with a working set smaller than r·period its
              memory_dirty_rate is W/period, well below r (8000 pages/s on 12 MiB read as
              ~4300): alone, it would make non-converging migrations look converging;
    W         the dirtier's working set the guest reported before the migration;
    footprint round-0 non-zero bytes: `normal_pages` at the last round-0 sample plus what
              was left to visit then, capped by the final `normal_bytes` (which also counts
              pages re-sent in later rounds, so alone it overstates a dirty guest's);
    timings   `total_time_ms`, `downtime_ms`, `transferred_bytes`, `iterations`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from orchestrator.edge.migrate import MigrationService
from orchestrator.edge.vms import VmService
from orchestrator.errors import OrchestratorError, UserError
from orchestrator.fog.guest_agent import GuestAgent
from orchestrator.fog.jobstats import footprint_bytes
from orchestrator.fog.migration import MigrationRequest
from orchestrator.fog.session import FleetSession
from orchestrator.model.calibration import MeasuredMigration
from orchestrator.model.precopy import MIB, Calibration, MigrationInputs, predict
from orchestrator.store import Store

EVENT_KIND = "calibration"
WORKLOADS = ("sweep", "uniform", "zipf", "bursty")  # the guest's writers, minus "none"
VM_PREFIX = "cal-m"
PAGE_SIZE = 4096
GUEST_RESERVE_MIB = 16  # the agent refuses a working set leaving less than this free
DIRTIER_SETTLE_S = 1.0  # let the dirtier reach its rate (and write its set once) first
MIN_TIMEOUT_S = 60.0  # safety net for a migration the stall detector does not catch
AGENT_WAIT_S = 10.0  # a guest busy dirtying answers slowly under TCG
RETRY_PAUSE_S = 5.0  # before re-running a point whose migration failed outright


@dataclass(frozen=True)
class GridPoint:
    """One migration of the campaign, in the user's units."""

    memory_mib: int
    dirty_pages_s: int
    working_set_mib: int
    bandwidth_mib_s: int
    downtime_ms: int
    workload: str = "sweep"  # the writer's family (sweep: the dirtier; see guest workloads)

    def __post_init__(self) -> None:
        _check(self.workload in WORKLOADS,
               f"unknown workload {self.workload!r} ({', '.join(WORKLOADS)})")
        _check(self.memory_mib > 0, f"memory must be > 0 MiB, got {self.memory_mib}")
        _check(self.dirty_pages_s >= 0,
               f"dirty rate must be >= 0 pages/s, got {self.dirty_pages_s}")
        _check(self.working_set_mib >= 0,
               f"working set must be >= 0 MiB, got {self.working_set_mib}")
        _check(self.working_set_mib < self.memory_mib,
               f"working set ({self.working_set_mib} MiB) must be below memory "
               f"({self.memory_mib} MiB)")
        _check(self.dirty_pages_s == 0 or self.working_set_mib > 0,
               "a positive dirty rate needs a working set > 0 MiB")
        _check(self.bandwidth_mib_s > 0, f"bandwidth must be > 0 MiB/s, got {self.bandwidth_mib_s}")
        _check(self.downtime_ms > 0, f"downtime limit must be > 0 ms, got {self.downtime_ms}")

    @property
    def family(self) -> str:
        """The workload family a report groups this point under ("idle" when not writing)."""
        return self.workload if self.dirty_pages_s else "idle"

    @property
    def dirty_mib_s(self) -> float:
        return self.dirty_pages_s * PAGE_SIZE / MIB

    def inputs(self) -> MigrationInputs:
        """What the predictor is told before this point runs (footprint unknown)."""
        return MigrationInputs(
            memory_bytes=self.memory_mib * MIB, dirty_rate_pages_s=float(self.dirty_pages_s),
            bandwidth_bytes_s=self.bandwidth_mib_s * MIB, downtime_limit_s=self.downtime_ms / 1000,
            working_set_bytes=self.working_set_mib * MIB or None)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


# --------------------------------------------------------------------------- grids

# (dirty pages/s, working set MiB, bandwidth MiB/s, downtime ms) per memory size. The mix
# per size: idle at low/high bandwidth, dirtying well below the bandwidth, near it, above it
# with a working set bigger than ς (never converges) and above it with a tiny one (does).
_QUICK: dict[int, list[tuple[int, int, int, int]]] = {
    # NOTE: a 128 MiB guest has ~20 MiB free with the data-plane agent and the dirtier keeps
    # 16 MiB in reserve, so its working sets stay at 4 MiB; a 50 ms limit (ς = 1 MiB at
    # 20 MiB/s) still puts such a set above ς for the never-converging cases.
    128: [(0, 0, 100, 300), (0, 0, 20, 100), (1000, 4, 20, 300), (2000, 4, 20, 50),
          (8000, 4, 20, 50), (4000, 4, 50, 100), (6000, 2, 10, 300), (0, 0, 5, 300),
          (3000, 4, 10, 50), (1500, 4, 10, 50)],
    256: [(0, 0, 100, 300), (0, 0, 40, 100), (4000, 32, 40, 300), (8000, 48, 50, 100),
          (16000, 48, 40, 300), (20000, 4, 100, 300), (12000, 32, 100, 50),
          (6000, 40, 20, 300), (2000, 16, 10, 300), (1000, 48, 100, 100)],
}

# The integration tier's grid: both outcomes, two bandwidths, two downtime limits, ~6 runs.
_SMALL: dict[int, list[tuple[int, int, int, int]]] = {
    128: [(0, 0, 100, 300), (0, 0, 40, 100), (2000, 4, 40, 300), (1000, 4, 40, 100),
          (8000, 4, 20, 50), (0, 0, 60, 300), (3000, 4, 60, 100)],
}


# Two families on one 128 MiB guest, for the integration tier (~8 runs, a few minutes).
_FAMILIES: dict[int, list[tuple[int, int, int, int, str]]] = {
    128: [(0, 0, 60, 300, "sweep"), (2000, 4, 40, 300, "sweep"), (1000, 4, 40, 100, "sweep"),
          (8000, 4, 20, 50, "sweep"), (2000, 4, 40, 300, "uniform"),
          (1000, 4, 40, 100, "uniform"), (8000, 4, 20, 50, "uniform"), (0, 0, 40, 100, "sweep")],
}


def _with_families(rows: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int, str]]:
    """The quick grid's dirtying points take the families in turn, so every family gets
    points across bandwidths and outcomes and can be held out (leave-one-workload-out)."""
    out, turn = [], 0
    for row in rows:
        family = WORKLOADS[turn % len(WORKLOADS)] if row[0] else "sweep"
        turn += 1 if row[0] else 0
        out.append((*row, family))
    return out


def _scaled(memory_mib: int) -> list[tuple[int, int, int, int]]:
    """The full grid's points for one size: working sets scale with the guest's room.

    Ordered so that `max_points` subsets keep every kind of case early: idle at both ends
    of the bandwidth range, dirtying below the bandwidth, beyond it (never converges) and
    beyond it on a tiny set (converges), then the remaining bandwidths.
    """
    room = max(2, (memory_mib - 120) // 2)  # what the guest (image + agent) leaves the dirtier
    small, large = max(2, room // 8), room

    def below(bandwidth: int, fraction: float) -> int:
        return int(fraction * bandwidth * MIB / PAGE_SIZE)

    beyond20, beyond50 = below(20, 1.6), below(50, 1.6)
    return [
        (0, 0, 5, 300), (0, 0, 100, 300),
        (below(20, 0.4), large, 20, 300), (below(20, 0.4), small, 20, 300),
        (beyond20, large, 20, 300), (beyond20, 2, 20, 300),
        (below(50, 0.5), large, 50, 100), (below(50, 0.5), small, 50, 100),
        (below(100, 0.3), large, 100, 50), (below(100, 0.3), small, 100, 50),
        (0, 0, 20, 300), (0, 0, 50, 100),
        (beyond50, large, 50, 100), (beyond50, 2, 50, 100),
    ]


def grid(kind: str = "quick", memories: Sequence[int] | None = None,
         max_points: int | None = None) -> list[GridPoint]:
    """The campaign's points in run order (grouped by memory: one VM per size).

    `quick` is 20 points on 128/256 MiB guests (≤ 10 min under TCG); `small` is the
    integration tier's ~7; `full` runs 128-1024 MiB. `memories` keeps only those sizes and
    `max_points` keeps the first N points of each size.
    """
    table: dict[int, list[tuple[int, int, int, int, str]]]
    if kind == "full":
        table = {m: _with_families(_scaled(m)) for m in (128, 256, 512, 1024)}
    elif kind == "quick":
        table = {m: _with_families(rows) for m, rows in _QUICK.items()}
    elif kind == "small":
        table = {m: [(*row, "sweep") for row in rows] for m, rows in _SMALL.items()}
    elif kind == "families":
        table = _FAMILIES
    else:
        raise UserError(f"unknown grid {kind!r} (quick, small, families or full)")
    if memories:
        unknown = sorted(set(memories) - set(table))
        if kind != "full" and unknown:
            raise UserError(f"the {kind} grid has no memory size {unknown[0]} MiB "
                            f"(has {', '.join(map(str, sorted(table)))})")
        table = {m: table.get(m) or _with_families(_scaled(m)) for m in memories}
    _check(max_points is None or max_points > 0, f"max points must be > 0, got {max_points}")
    return [GridPoint(memory, *row) for memory, rows in table.items()
            for row in rows[:max_points]]


def fits_guest(point: GridPoint, available_mib: float) -> bool:
    """The agent refuses a working set leaving < 16 MiB free: skip such a point up front."""
    return point.working_set_mib <= available_mib - GUEST_RESERVE_MIB


# --------------------------------------------------------------------------- records


def measured_from_record(record: dict[str, Any]) -> MeasuredMigration | None:
    """A store record (with samples) as a MeasuredMigration; None if it cannot serve.

    Serves: completed with final figures, or aborted because the pre-copy stalled (a
    non-converging migration). Anything else (failed, aborted by a timeout) says nothing
    about the model.
    """
    result, params = record.get("result") or {}, record.get("params") or {}
    samples = record.get("samples") or result.get("samples") or []
    status = record.get("status")
    stalled = status == "aborted" and bool(result.get("stalled"))
    final = result.get("final") or {}
    if not stalled and not (status == "completed" and final.get("total_time_ms")):
        return None
    memory = int(params.get("memory_bytes") or result.get("memory_bytes") or 0)
    bandwidth = _bandwidth(samples, params)
    if memory <= 0 or bandwidth <= 0:
        return None
    working_set = int(params.get("working_set_bytes") or 0) or None
    downtime_ms = params.get("downtime_ms") or 300
    measured_rate, window = _hypervisor_rate(params)
    return MeasuredMigration(
        memory_bytes=memory,
        dirty_rate_pages_s=(measured_rate if window is not None
                            else _dirty_rate(samples, params)),
        working_set_bytes=min(working_set, memory) if working_set else None,
        bandwidth_bytes_s=bandwidth,
        downtime_limit_s=downtime_ms / 1000,
        footprint_bytes=None if stalled else footprint_bytes(final, samples, memory),
        total_time_s=(final.get("total_time_ms") or 0) / 1000,
        transferred_bytes=float(final.get("transferred_bytes") or 0),
        downtime_s=(final.get("downtime_ms") or 0) / 1000,
        iterations=int(final.get("iterations") or 0),
        converged=not stalled,
        label=f"#{record.get('id')}",
        eta_error_pct=_eta_errors(result),
        finish_s=_finish_s(result, samples) if not stalled else None,
        workload=_workload(params),
        dirty_window_s=window,
    )


def _workload(params: dict[str, Any]) -> str:
    """The writer's family as `migrate` recorded it; a record that measured r_dir but names
    no writer ran none (its rate is the guest's background). Older records knew only the
    dirtier: a set point means a sweep."""
    if params.get("workload"):
        return str(params["workload"])
    if params.get("dirty_rate_source") or not params.get("dirty_rate_pages_s"):
        return "idle"
    return "sweep"


def _finish_s(result: dict[str, Any], samples: Sequence[dict[str, Any]]) -> float | None:
    """Seconds from the last job sample to the end of libvirt's migrate call."""
    wall = result.get("wall_time_ms")
    times = [s["t_s"] for s in samples if isinstance(s.get("t_s"), int | float)]
    return max(0.0, wall / 1000 - max(times)) if wall and times else None


def _eta_errors(result: dict[str, Any]) -> tuple[float | None, ...]:
    """The live ETA's error at each checkpoint the record kept (none for older records)."""
    checkpoints = (result.get("eta") or {}).get("checkpoints") or []
    return tuple(c.get("error_pct") for c in checkpoints if isinstance(c, dict))


def _hypervisor_rate(params: dict[str, Any]) -> tuple[float, float | None]:
    """(r_dir, window) when the migration measured r_dir on the hypervisor beforehand (what
    a user knows before migrating); (0, None) for records from before that."""
    source = str(params.get("dirty_rate_source") or "")
    window = params.get("dirty_rate_window_s")
    if source.startswith("hypervisor") and isinstance(window, int | float) and window > 0:
        return float(params.get("dirty_rate_pages_s") or 0.0), float(window)
    return 0.0, None


def _bandwidth(samples: Sequence[dict[str, Any]], params: dict[str, Any]) -> float:
    """r_mig: what the stream achieved (memory_bps), else the cap asked for."""
    rates = [s["bandwidth_bps"] for s in samples if s.get("bandwidth_bps")]
    if rates:
        return float(statistics.median(rates))
    cap = params.get("bandwidth_mib_s")
    return float(cap) * MIB if cap else 0.0


def _dirty_rate(samples: Sequence[dict[str, Any]], params: dict[str, Any]) -> float:
    """r_dir: the guest's writing rate, or QEMU's measured one when higher (see above).

    NOTE: QEMU reports memory_dirty_rate only from iteration 2 on; 0 before that means
    "not measured yet", so those samples are skipped. QEMU measures once per dirty sync, so
    each iteration counts once (its last sample): a long early round sampled many times
    must not outvote the later rounds' measurements.
    """
    per_round = {s["iteration"]: s["dirty_rate_pages_s"] for s in samples
                 if s.get("iteration", 0) >= 2 and s.get("dirty_rate_pages_s")}
    measured = float(statistics.median(per_round.values())) if per_round else 0.0
    return max(measured, float(params.get("dirty_rate_pages_s") or 0))


# --------------------------------------------------------------------------- the runner


@dataclass(frozen=True)
class PointResult:
    """One grid point as run: the point, its record id and outcome, or why it was skipped."""

    point: GridPoint
    record_id: int | None
    status: str  # completed | aborted | failed | skipped
    stalled: bool = False
    predicted_converges: bool | None = None
    total_time_s: float | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "point": asdict(self.point)}


Progress = Callable[[int, int, PointResult], None]


@dataclass
class CalibrationRunner:
    """Runs a grid on two fog nodes; every migration goes through MigrationService."""

    session: FleetSession
    store: Store
    state_dir: Path
    nodes: tuple[str, str] = ("fog1", "fog2")
    calibration: Calibration | None = None
    settle_s: float = DIRTIER_SETTLE_S
    sleep: Callable[[float], None] = time.sleep
    notify: Callable[[str], None] = lambda _line: None
    warm_up: dict[str, Any] | None = None  # the warm-up migration's outcome, once run

    def run(self, points: Sequence[GridPoint], progress: Progress | None = None
            ) -> list[PointResult]:
        """All points, one VM per memory size; VMs are destroyed even on failure."""
        for node in self.nodes:
            self.session.fleet.node(node)  # unknown node: one-line error before anything runs
        results: list[PointResult] = []
        for index, (memory, group) in enumerate(_by_memory(points)):
            with self._vm(memory) as (vm, agent):
                if index == 0:
                    self.warm_up = self._warm_up(vm, max(p.bandwidth_mib_s for p in points))
                for point in group:
                    results.append(self._run_point_retrying(vm, agent, point))
                    if progress:
                        progress(len(results), len(points), results[-1])
        return results

    def _warm_up(self, vm: str, bandwidth_mib_s: int) -> dict[str, Any]:
        """One idle migration before the grid, kept out of the fit.

        NOTE: the first migration into a fresh lab pays one-time costs (the destination's
        first QEMU start, cold caches) that no later migration sees; measuring it would
        skew the fit, and on a freshly booted CI machine it has failed outright.
        """
        request = MigrationRequest(vm=vm, destination=self._other_node(vm),
                                   bandwidth_mib_s=bandwidth_mib_s, timeout_s=MIN_TIMEOUT_S)
        try:
            result = self._migrate(request)
            outcome = {"id": result["id"], "status": result["status"], "error": result["error"]}
        except OrchestratorError as exc:
            outcome = {"id": None, "status": "failed", "error": str(exc)}
        self.notify(f"warm-up migration to {request.destination}: {outcome['status']}"
                    f"{' — ' + outcome['error'] if outcome['error'] else ''}")
        return outcome

    def _run_point_retrying(self, vm: str, agent: GuestAgent, point: GridPoint) -> PointResult:
        """A migration that failed outright (not stalled, not aborted by policy) is run once
        more; both records stay in the store, the campaign keeps the second."""
        first = self._run_point(vm, agent, point)
        if first.status != "failed":
            return first
        self.sleep(RETRY_PAUSE_S)
        second = self._run_point(vm, agent, point)
        return replace(second, note=f"retried after: {first.note}; {second.note}".rstrip("; "))

    @contextmanager
    def _vm(self, memory_mib: int) -> Iterator[tuple[str, GuestAgent]]:
        name = f"{VM_PREFIX}{memory_mib}"
        vms = VmService(self.session, self.store)
        if self.store.vm(name) is not None or self.session.locate(name):
            vms.destroy(name)  # a leftover of a crashed campaign: start clean
        record = vms.create(name, self.nodes[0], memory_mib)
        try:
            assert record.address, "lab VMs have an address"
            yield name, vms.agent(name, timeout_s=AGENT_WAIT_S)
        finally:
            vms.destroy(name)

    def _run_point(self, vm: str, agent: GuestAgent, point: GridPoint) -> PointResult:
        predicted = predict(point.inputs(), self.calibration)
        try:
            _release_on_resize(agent, point.working_set_mib)
            available = agent.wait_ready(AGENT_WAIT_S)["memory"]["available_kib"] / 1024
            if not fits_guest(point, available):
                return PointResult(point, None, "skipped", note=(
                    f"working set {point.working_set_mib} MiB leaves < {GUEST_RESERVE_MIB} MiB "
                    f"free ({available:.0f} MiB available)"))
            _start_writer(agent, point)
            self.sleep(self.settle_s + self._one_pass_s(point))
            result = self._migrate(self._request(vm, point))
        except OrchestratorError as exc:
            return PointResult(point, None, "failed", note=str(exc))
        finally:
            _quiet(agent, point)
        return PointResult(point, result["id"], result["status"], bool(result["stalled"]),
                           predicted.converges, (result["total_time_ms"] or 0) / 1000 or None,
                           result["error"] or "")

    def _migrate(self, request: MigrationRequest) -> dict[str, Any]:
        return MigrationService(self.session, self.store, self.state_dir,
                                self.calibration).migrate(request)

    def _other_node(self, vm: str) -> str:
        here = self.session.running_on(vm)
        return self.nodes[1] if here == [self.nodes[0]] else self.nodes[0]

    def _request(self, vm: str, point: GridPoint) -> MigrationRequest:
        naive = point.memory_mib / point.bandwidth_mib_s
        return MigrationRequest(vm=vm, destination=self._other_node(vm),
                                bandwidth_mib_s=point.bandwidth_mib_s,
                                downtime_ms=point.downtime_ms,
                                timeout_s=max(MIN_TIMEOUT_S, 4 * naive))

    @staticmethod
    def _one_pass_s(point: GridPoint) -> float:
        """Time for the dirtier to write its whole set once, so round 0 sees it non-zero."""
        if not point.dirty_pages_s:
            return 0.0
        return min(5.0, point.working_set_mib * MIB / PAGE_SIZE / point.dirty_pages_s)


def _release_on_resize(agent: GuestAgent, working_set_mib: int) -> None:
    """Free the old buffer before a new size is allocated.

    NOTE: the agent allocates the new bytearray while the old one is still referenced, so
    a 32 → 40 MiB resize in a 256 MiB guest peaks at 72 MiB and the guest's OOM killer
    took the agent (seen in the first quick campaign). Going through 0 avoids the peak.
    """
    current = int(agent.wait_ready(AGENT_WAIT_S)["dirty"]["working_set_bytes"] / MIB)
    if current and current != working_set_mib:
        agent.set_dirtier(0, 0)


def _start_writer(agent: GuestAgent, point: GridPoint) -> None:
    """The point's writer: the dirtier for a sweep, else the guest's workload family. Only
    one buffer at a time: two would leave a small guest no room (see _release_on_resize)."""
    if point.workload == "sweep":
        agent.set_dirtier(point.dirty_pages_s, point.working_set_mib)
        return
    agent.set_dirtier(0, 0)
    agent.request("workload", kind=point.workload, pages_per_s=point.dirty_pages_s,
                  working_set_mib=point.working_set_mib)


def _quiet(agent: GuestAgent, point: GridPoint | None = None) -> None:
    """Stop writing between points (keep the dirtier's buffer: resizing churns guest
    memory; a workload family's is freed, the next point may be another family)."""
    try:
        if point is not None and point.workload != "sweep":
            agent.request("workload", kind="none")
        else:
            agent.set_dirtier(0, int(agent.status()["dirty"]["working_set_bytes"] / MIB))
    except OrchestratorError:
        pass


def _by_memory(points: Iterable[GridPoint]) -> list[tuple[int, list[GridPoint]]]:
    groups: dict[int, list[GridPoint]] = {}
    for point in points:
        groups.setdefault(point.memory_mib, []).append(point)
    return list(groups.items())


# --------------------------------------------------------------------------- campaigns


def log_campaign(store: Store, kind: str, results: Sequence[PointResult],
                 every: int) -> None:
    """One event naming the campaign's records, so the report finds exactly them."""
    store.add_event(EVENT_KIND, kind, {
        "record_ids": [r.record_id for r in results if r.record_id is not None],
        "every": every, "points": [r.as_dict() for r in results]})


def latest_campaign(store: Store) -> dict[str, Any]:
    events = store.events(EVENT_KIND)
    if not events:
        raise UserError("no calibration campaign recorded yet (run `orchestrator calibrate`)")
    latest: dict[str, Any] = max(events, key=lambda e: e.get("id", 0))
    return latest


def campaign_measurements(store: Store, record_ids: Sequence[int]) -> list[MeasuredMigration]:
    """The campaign's usable records, in run order (the held-out split depends on it)."""
    measured = []
    for record_id in record_ids:
        record = store.migration(record_id)
        converted = measured_from_record(record) if record else None
        if converted is not None:
            measured.append(converted)
    return measured


def campaign_qemu_version(store: Store, record_ids: Sequence[int]) -> str:
    """The QEMU the campaign's migrations ran on (as `migrate` recorded it), "" if none
    said; the most frequent one if a campaign straddled an upgrade."""
    versions: dict[str, int] = {}
    for record_id in record_ids:
        record = store.migration(record_id) or {}
        version = (record.get("params") or {}).get("qemu_version")
        if isinstance(version, str) and version:
            versions[version] = versions.get(version, 0) + 1
    return max(versions, key=lambda v: versions[v]) if versions else ""


def stamped(calibration: Calibration, qemu_version: str,
            records: Sequence[MeasuredMigration]) -> Calibration:
    """The fitted calibration with the QEMU version and workload families it was fitted on."""
    families = sorted({r.workload for r in records if r.workload not in ("", "idle")})
    return replace(calibration, qemu_version=qemu_version, workloads=",".join(families))
