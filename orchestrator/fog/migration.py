"""Pre-copy live migration of one domain between two fog nodes, watched while it runs.

The blocking `migrateToURI3` call runs in a worker thread; the calling thread samples the
job statistics every `interval_s` and applies the user's policy when the timeout passes.
Policy decisions are small pure functions; the loop takes its clock, sleep and job-stats
source as parameters so it is tested with a scripted job and a fake clock (libvirt's test
driver cannot migrate).
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import libvirt

from orchestrator.errors import OrchestratorError, UserError
from orchestrator.fog.hypervisor import Guest, Hypervisor
from orchestrator.fog.jobstats import FinalStats, JobSample, parse_completed, parse_sample
from orchestrator.model.live import LiveEta, detect_stall

Clock = Callable[[], float]
Sleep = Callable[[float], None]


@dataclass(frozen=True)
class MigrationRequest:
    vm: str
    destination: str
    bandwidth_mib_s: int | None = None
    downtime_ms: int | None = None
    auto_converge: bool = False
    postcopy: bool = False
    timeout_s: float | None = None
    storage: str | None = None  # None (shared or no disks) | "incremental" | "full"
    disks: tuple[str, ...] = ()  # disk targets to copy with storage (default: all)
    tls: bool = False  # encrypt the migration stream (set for nodes reached over qemu+tls)

    def __post_init__(self) -> None:
        if self.storage not in (None, "incremental", "full"):
            raise UserError(f"--storage must be incremental or full, got {self.storage!r}")
        if self.bandwidth_mib_s is not None and self.bandwidth_mib_s <= 0:
            raise UserError(f"--bandwidth must be > 0 MiB/s, got {self.bandwidth_mib_s}")
        if self.downtime_ms is not None and self.downtime_ms <= 0:
            raise UserError(f"--downtime-ms must be > 0, got {self.downtime_ms}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise UserError(f"--timeout must be > 0 s, got {self.timeout_s}")

    @property
    def policy(self) -> str:
        """What happens at the timeout: abort, or switch to post-copy."""
        return "postcopy" if self.postcopy else "abort"


def migration_flags(request: MigrationRequest) -> int:
    """Live, peer-to-peer (source libvirtd talks to the destination), persistent on the
    destination and undefined on the source, so the VM exists exactly once afterwards."""
    flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
             | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
    if request.auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if request.postcopy:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    if request.tls:
        flags |= libvirt.VIR_MIGRATE_TLS
    if request.storage == "incremental":  # only the overlay: the backing image is there
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
    elif request.storage == "full":
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
    return flags


def migration_params(request: MigrationRequest) -> dict[str, Any]:
    """libvirt's typed migration parameters for the request.

    NOTE: QEMU caps the post-copy phase with its own parameter (max-postcopy-bandwidth,
    libvirt's VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY); unset, post-copy runs uncapped whatever
    the pre-copy cap was (issue 18: by hand, a 6 MiB/s migration's post-copy phase ignored
    the cap). The user's --bandwidth caps both phases.
    """
    params: dict[str, Any] = {}
    if request.bandwidth_mib_s is not None:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(request.bandwidth_mib_s)
        if request.postcopy:  # MiB/s as well (virsh's --postcopy-bandwidth passes it on)
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY] = int(request.bandwidth_mib_s)
    if request.storage and request.disks:
        params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(request.disks)
    return params


class TimeoutAction(enum.Enum):
    NONE = "none"
    ABORT = "abort"
    POSTCOPY = "postcopy"


def timeout_action(elapsed_s: float, timeout_s: float | None, postcopy: bool,
                   already_acted: bool) -> TimeoutAction:
    """What to do now about the timeout; acts at most once per migration."""
    if timeout_s is None or already_acted or elapsed_s < timeout_s:
        return TimeoutAction.NONE
    return TimeoutAction.POSTCOPY if postcopy else TimeoutAction.ABORT


def stall_action(stalled: bool, postcopy: bool, auto_converge: bool,
                 already_acted: bool) -> TimeoutAction:
    """What to do about a pre-copy that stopped converging; at most once per migration.

    With auto-converge QEMU's own vCPU throttling is the remedy the user chose, so the stall
    is recorded but not acted upon; otherwise the user's policy applies at once rather than
    letting a hopeless pre-copy run until a timeout (or forever, without one).
    """
    if not stalled or already_acted or auto_converge:
        return TimeoutAction.NONE
    return TimeoutAction.POSTCOPY if postcopy else TimeoutAction.ABORT


@dataclass
class Watch:
    """Everything the monitor loop saw."""

    samples: list[JobSample] = field(default_factory=list)
    action: TimeoutAction = TimeoutAction.NONE
    action_error: str | None = None
    stall: str | None = None  # why the pre-copy was judged stalled, if it was
    abandoned: bool = False  # stopped waiting for a libvirt call that outlived its job
    acted_at_s: float | None = None  # when the policy (or a cancel) acted, since the start
    cancelled: bool = False  # the user asked to cancel while the job ran


def watch(job_stats: Callable[[], dict[str, Any]], finished: Callable[[], bool],
          act: Callable[[TimeoutAction], None], *, timeout_s: float | None, postcopy: bool,
          auto_converge: bool = False, clock: Clock = time.monotonic, sleep: Sleep = time.sleep,
          interval_s: float = 0.2, job_gone_grace_s: float = 15.0,
          on_sample: Callable[[JobSample], None] | None = None,
          cancel_requested: Callable[[], bool] = lambda: False,
          live: LiveEta | None = None) -> Watch:
    """Sample the job until `finished()`; apply the policy once, at the timeout or as soon as
    the pre-copy stalls (remaining data no longer shrinking from round to round).

    Samples are paced on a fixed grid (`interval_s` apart, measured from the start), not
    by sleeping `interval_s` after each one: the jobStats round trip, the record write and
    the observer would otherwise stretch every interval beyond `interval_s` (measured on
    the lab: 202 ms median, 510 ms worst for a 200 ms setting). A sample that comes late
    is followed by the next one at once, and the grid restarts from it.

    NOTE: when the core link dies, libvirt's peer-to-peer call can hang for many minutes
    after the source job has ended (it waits on the unreachable destination libvirtd). Once
    our policy has acted and the source has shown no job for `job_gone_grace_s`, the watch
    gives up waiting (`abandoned`); the caller then checks where the VM really runs.
    """
    seen = Watch()
    start = clock()
    gone_since: float | None = None
    due = 0.0  # when this sample was due, seconds since the start
    while not finished():
        now = clock() - start
        due = max(due, now)  # a late sample restarts the grid
        try:
            sample = parse_sample(job_stats(), now)
        except OrchestratorError:
            sample = None  # the job ended between finished() and jobStats()
        gone_since = None if sample is not None else (now if gone_since is None else gone_since)
        if (gone_since is not None and seen.action is not TimeoutAction.NONE
                and now - gone_since >= job_gone_grace_s):
            seen.abandoned = True
            break
        acted = seen.action is not TimeoutAction.NONE
        action = timeout_action(now, timeout_s, postcopy, acted)
        if sample is not None:
            seen.samples.append(sample)
            if on_sample:
                on_sample(sample)
            if seen.stall is None:
                seen.stall = _stall(seen.samples, sample, live)
                if action is TimeoutAction.NONE:
                    action = stall_action(seen.stall is not None, postcopy, auto_converge,
                                          acted)
        if action is not TimeoutAction.NONE:
            seen.action = action
            seen.acted_at_s = now if seen.acted_at_s is None else seen.acted_at_s
            try:
                act(action)
            except OrchestratorError as exc:
                seen.action_error = str(exc)
        if cancel_requested():
            _cancel(seen, act, now)
        due += interval_s
        delay = due - (clock() - start)
        if delay > 0:
            sleep(delay)
    return seen


def _cancel(seen: Watch, act: Callable[[TimeoutAction], None], now: float) -> None:
    """Abort on the user's request, on every sample until the call returns.

    NOTE: an abort that lands before QEMU's migration started (libvirt still preparing the
    destination) is remembered by libvirt and fails the job when it would start; repeating
    it costs nothing and covers a phase that does not take it. After a switch to post-copy
    libvirt refuses to abort (the guest already runs at the destination): the migration
    then finishes, and the record says the cancel came too late.
    """
    if not seen.cancelled:
        seen.cancelled = True
        seen.acted_at_s = now
        if seen.action is TimeoutAction.NONE:
            seen.action = TimeoutAction.ABORT
    try:
        act(TimeoutAction.ABORT)
    except OrchestratorError as exc:
        seen.action_error = f"cancel: {exc}"


def _stall(samples: list[JobSample], sample: JobSample, live: LiveEta | None) -> str | None:
    """Why the pre-copy is judged stalled, or None: the live tracker (model verdict held
    for a stated time, or no shrink over rounds) when there is one, else the rounds alone."""
    if live is not None:
        live.update(sample.to_model())
        return live.stall_reason
    verdict = detect_stall(samples)
    return verdict.reason if verdict.stalled else None


@dataclass
class MigrationOutcome:
    status: str  # completed | failed | aborted
    samples: list[JobSample]
    final: FinalStats | None
    wall_s: float
    action: str
    error: str | None = None
    stall: str | None = None
    acted_at_s: float | None = None  # when the policy or a cancel acted, seconds from start


def run_migration(guest: Guest, destination: Hypervisor, request: MigrationRequest, *,
                  clock: Clock = time.monotonic, sleep: Sleep | None = None,
                  interval_s: float = 0.2,
                  on_sample: Callable[[JobSample], None] | None = None,
                  cancel: threading.Event | None = None,
                  live: LiveEta | None = None) -> MigrationOutcome:
    """Migrate `guest` to `destination`; never raises for a failed migration itself.

    `cancel` set while the job runs aborts it (the user's Ctrl-C or SIGTERM): the outcome
    is then `cancelled` unless the migration completed anyway (post-copy cannot be undone).
    """
    if request.downtime_ms is not None:
        guest.set_max_downtime(request.downtime_ms)
    failure: list[BaseException] = []

    def migrate() -> None:
        try:
            # NOTE: the URI the destination was opened with: the source libvirtd gets the
            # address netguard checked, never a name to resolve again.
            guest.migrate(destination.uri, migration_params(request),
                          migration_flags(request))
        except BaseException as exc:  # handed to the monitoring thread
            failure.append(exc)

    def act(action: TimeoutAction) -> None:
        if action is TimeoutAction.ABORT:
            guest.abort_job()
        elif action is TimeoutAction.POSTCOPY:
            guest.start_postcopy()

    started = clock()
    with _completed_job_listener(guest) as source_final:
        worker = threading.Thread(target=migrate, name=f"migrate-{request.vm}", daemon=True)
        if cancel is None or not cancel.is_set():
            worker.start()
        # By default the pause between samples is a join on the worker, so the monitor
        # wakes the moment libvirt returns instead of finishing its sleep.
        seen = watch(guest.job_stats, lambda: not worker.is_alive(), act,
                     timeout_s=request.timeout_s, postcopy=request.postcopy,
                     auto_converge=request.auto_converge, clock=clock,
                     sleep=sleep or worker.join, interval_s=interval_s, on_sample=on_sample,
                     cancel_requested=cancel.is_set if cancel else lambda: False,
                     live=live)
        if not seen.abandoned and worker.ident is not None:
            worker.join()
        final = None
        if worker.ident is not None and not seen.abandoned and not failure:
            final = _final_stats(destination, request.vm, seen.samples, source_final)
    return _outcome(seen, failure, final, clock() - started,
                    cancel is not None and cancel.is_set() and worker.ident is None)


def _outcome(seen: Watch, failure: list[BaseException], final: FinalStats | None,
             wall: float, never_started: bool) -> MigrationOutcome:
    """What the watch and libvirt's answer add up to."""
    def outcome(status: str, error: str | None) -> MigrationOutcome:
        return MigrationOutcome(status, seen.samples, final, wall, seen.action.value, error,
                                seen.stall, seen.acted_at_s)

    if never_started:
        return outcome("cancelled", "cancelled by the user before the migration started")
    if seen.abandoned:
        return outcome("cancelled" if seen.cancelled else "aborted",
                       "libvirt's migration call had not returned after the job ended "
                       "(destination unreachable?)")
    if failure:
        if seen.cancelled:
            return outcome("cancelled", f"cancelled by the user: {failure[0]}")
        status = "aborted" if seen.action is TimeoutAction.ABORT else "failed"
        return outcome(status, str(failure[0]))
    error = seen.action_error
    if seen.cancelled:
        error = ("cancel came too late: the migration completed"
                 + (f" ({seen.action_error})" if seen.action_error else ""))
    return outcome("completed", error)


@contextmanager
def _completed_job_listener(guest: Guest) -> Iterator[dict[str, Any]]:
    """The source's own figures of the finished job, from libvirt's job-completed event.

    NOTE: after a switch to post-copy the destination's completed job stats are empty
    (`{'type': 0}` on libvirt 9.0: the figures it gets from the source's cookie were taken
    before the post-copy phase ended), so a record read from there kept zeros for time,
    bytes, iterations and downtime. The source emits VIR_DOMAIN_EVENT_ID_JOB_COMPLETED with
    the full figures once the job is over (seen: 24.2 s, 149 MB, downtime 41 ms, 363
    post-copy page requests). Needs the event loop, which every connection has.
    """
    got: dict[str, Any] = {}
    arrived = threading.Event()

    def completed(_conn: object, _dom: object, params: dict[str, Any], _opaque: object) -> None:
        got.update(params)
        arrived.set()

    handle = None
    try:
        conn = guest.dom.connect()
        handle = conn.domainEventRegisterAny(
            guest.dom, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, completed, None)
    except (libvirt.libvirtError, AttributeError):
        pass  # no event (e.g. a test double): the destination's figures must do
    got["_arrived"] = arrived
    try:
        yield got
    finally:
        if handle is not None:
            try:
                conn.domainEventDeregisterAny(handle)
            except libvirt.libvirtError:
                pass  # the connection went away, and the registration with it


EVENT_WAIT_S = 2.0  # the job-completed event comes from libvirt's event thread, maybe later


def _final_stats(destination: Hypervisor, vm: str, samples: list[JobSample],
                 source_final: dict[str, Any] | None = None) -> FinalStats | None:
    """The completed job's figures: libvirt keeps them on the destination domain; when
    those are empty (after post-copy), the source's job-completed event has them."""
    raw: dict[str, Any] = {}
    arrived = destination.lookup(vm)
    if arrived is not None:
        try:
            raw = arrived.job_stats(completed=True)
        except OrchestratorError:
            raw = {}
    if not int(raw.get("time_elapsed", 0) or 0) and source_final is not None:
        event = source_final.get("_arrived")
        if isinstance(event, threading.Event):
            event.wait(EVENT_WAIT_S)
        raw = {k: v for k, v in source_final.items() if not k.startswith("_")}
    if not raw:
        return None
    return parse_completed(raw, samples)
