"""`orchestrator migrate NAME --to NODE`: one real pre-copy live migration."""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from orchestrator import calibration_store
from orchestrator.commands._common import (
    app,
    console,
    fleet_session,
    inventory_option,
    json_option,
    print_json,
    print_table,
    store,
)
from orchestrator.commands._numbers import MIB_S_MAX, MS_MAX, SECONDS_MAX, count, positive
from orchestrator.edge.migrate import DEFAULT_MAX_PER_NODE, MigrationService, live_tracker
from orchestrator.edge.reconcile import Reconciler
from orchestrator.errors import ExitStatus
from orchestrator.fleet import default_lab_prefix
from orchestrator.fog.jobstats import JobSample
from orchestrator.fog.migration import MigrationRequest
from orchestrator.fog.node import validate_name
from orchestrator.model.live import EtaState, LiveEta
from orchestrator.model.precopy import Calibration, MigrationInputs, Prediction
from orchestrator.store import Store

if TYPE_CHECKING:
    from rich.progress import Progress


@click.command("migrate")
@click.argument("name")
@click.option("--to", "destination", required=True, help="Destination fog node.")
@click.option("--bandwidth", "bandwidth_mib_s", type=count(1, int(MIB_S_MAX)), default=None,
              help="Migration bandwidth cap in MiB/s.")
@click.option("--downtime-ms", type=count(1, int(MS_MAX)),
              default=None, help="Maximum downtime (stop-and-copy).")
@click.option("--auto-converge", is_flag=True, help="Throttle the guest's vCPUs if needed.")
@click.option("--postcopy", is_flag=True, help="Allow post-copy; switch to it at --timeout.")
@click.option("--timeout", "timeout_s", type=positive(SECONDS_MAX), default=None,
              help="Seconds before the policy applies: abort, or post-copy with --postcopy.")
@click.option("--storage", type=click.Choice(["incremental", "full"]), default=None,
              help="Copy local disks too: only overlays (the backing image is already at "
                   "the destination, e.g. a replica) or everything.")
@click.option("--max-per-node", type=count(1, 64), envvar="EDGEIOT_MAX_MIGRATIONS_PER_NODE",
              default=DEFAULT_MAX_PER_NODE, show_default=True,
              help="Concurrent migrations a node takes part in; more wait for a slot.")
@click.option("--flow-move/--no-flow-move", default=True, show_default=True,
              help="With the lab's SDN core: move the VM's flows at the switch-over.")
@inventory_option
@json_option
@click.pass_context
def command(ctx: click.Context, name: str, destination: str, bandwidth_mib_s: int | None,
            downtime_ms: int | None, auto_converge: bool, postcopy: bool,
            timeout_s: float | None, storage: str | None, max_per_node: int,
            flow_move: bool, inventory: str | None, as_json: bool) -> ExitStatus:
    """Live-migrate a VM (pre-copy) to another fog node."""
    validate_name("VM", name)
    request = MigrationRequest(vm=name, destination=destination,
                               bandwidth_mib_s=bandwidth_mib_s, downtime_ms=downtime_ms,
                               auto_converge=auto_converge, postcopy=postcopy,
                               timeout_s=timeout_s, storage=storage)
    with fleet_session(ctx, inventory) as session, store(ctx) as records:
        session.fleet.node(destination)  # an unknown node is refused before any repair
        _reconcile_orphans(Reconciler(session, records))
        calibration = calibration_store.load(app(ctx).state_path)
        service = MigrationService(session, records, app(ctx).state_path, calibration,
                                   max_per_node,
                                   on_switchover=_flow_mover(ctx, inventory, records, name)
                                   if flow_move else None)
        with _observer(name, not as_json and console.is_terminal, calibration) as observer, \
                _cancel_on_signals() as cancel:
            result = service.migrate(request, observer, cancel)
    if as_json:
        print_json(result)
    else:
        render_migrations([result])
        if result["error"]:
            click.echo(f"migration {result['status']}: {result['error']}", err=True)
    if result["status"] == "cancelled":
        return ExitStatus.INTERRUPTED
    return ExitStatus.SUCCESS if result["status"] == "completed" else ExitStatus.ERROR


@contextmanager
def _cancel_on_signals() -> Iterator[threading.Event]:
    """SIGINT (Ctrl-C) and SIGTERM cancel the migration instead of killing the process.

    Killed outright, the process would leave libvirt's job running unwatched and the record
    `running` until a reconcile. Instead the signal sets an event the monitor checks on every
    sample (200 ms): it aborts the job, the VM stays on the source, the record says
    `cancelled`, and the exit status is 130. Outside the main thread (a library caller)
    signals cannot be caught, and the event is only the caller's.
    """
    cancel = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield cancel
        return

    def handler(signum: int, _frame: object) -> None:
        if not cancel.is_set():
            click.echo(f"orchestrator: {signal.Signals(signum).name}: cancelling the "
                       "migration", err=True)
        cancel.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield cancel
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _flow_mover(ctx: click.Context, inventory: str | None, records: Store,
                vm: str) -> Callable[[str, str], object] | None:
    """With the lab's SDN core up, move the VM's flows at the switch-over (not after the
    migration returns, when QEMU's own announcement has already gone out)."""
    record = records.vm(vm)  # read here: the hook runs in another thread, the store may not
    if inventory or record is None:
        return None
    # Imported here: the SDN controller's client costs 50 ms of start-up that a migration on
    # a bridge core or real hosts never uses.
    from orchestrator.lab.sdn import switchover_mover
    from orchestrator.lab.state import LabPaths
    prefix = default_lab_prefix()
    return switchover_mover(LabPaths(app(ctx).state_path, prefix).root, prefix, record.mac,
                            lambda msg: click.echo(f"orchestrator: warning: {msg}", err=True))


def _reconcile_orphans(reconciler: Reconciler) -> None:
    """A migration left by a dead orchestrator is settled before a new one starts."""
    if reconciler.orphans():
        report = reconciler.run()
        for record_id, status, why in report["closed_records"]:
            click.echo(f"reconciled migration #{record_id} as {status}: {why}", err=True)


class ProgressObserver:
    """Progress bar with a time-remaining estimate that never runs backwards.

    The same tracker the migration record keeps (`edge.migrate.live_tracker`: seeded with
    the prediction, re-estimated from every sample, smoothed by `monotone_eta`), so the ETA
    the record stores at 10/25/50/75 % of the elapsed time is the one shown. "?" while the
    end is unknown (a prediction of no convergence and no finite live estimate yet); a
    trailing "…" while the countdown holds because the evidence says later.
    """

    def __init__(self, progress: Progress, vm: str,
                 calibration: Calibration | None = None) -> None:
        self.progress = progress
        self.calibration = calibration
        self.live: LiveEta | None = None
        self.task = progress.add_task(f"migrating {vm}", total=None, iteration=0,
                                      remaining="-", dirty=0, rate="-", eta="?")

    def started(self, inputs: MigrationInputs | None, prediction: Prediction | None) -> None:
        self.live = live_tracker(inputs, prediction, self.calibration)

    def sample(self, sample: JobSample) -> None:
        state = self.live.update(sample.to_model()) if self.live else None
        total = sample.processed_bytes + sample.remaining_bytes
        self.progress.update(
            self.task, total=total or None, completed=sample.processed_bytes,
            iteration=sample.iteration, dirty=sample.dirty_rate_pages_s,
            remaining=f"{sample.remaining_bytes / 2**20:.1f}",
            rate=f"{sample.bandwidth_bps / 2**20:.1f}", eta=eta_text(state))


def eta_text(state: EtaState | None) -> str:
    if state is None or not math.isfinite(state.remaining_s):
        return "?"
    return f"{state.remaining_s:.1f} s{'…' if state.holding else ''}"


@contextmanager
def _observer(vm: str, enabled: bool,
              calibration: Calibration) -> Iterator[ProgressObserver | None]:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # terminal only
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn(
        "iter {task.fields[iteration]}  left {task.fields[remaining]} MiB  "
        "dirty {task.fields[dirty]} pages/s  {task.fields[rate]} MiB/s  "
        "ETA {task.fields[eta]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        yield ProgressObserver(progress, vm, calibration)


def render_migrations(results: list[dict[str, Any]]) -> None:
    def mib(v: Any) -> str | None:
        return None if v is None else f"{v / 2**20:.1f}"

    print_table("migrations", ["vm", "hop", "status", "total ms", "downtime ms", "setup ms",
                               "iterations", "sent MiB", "max dirty pages/s", "samples"],
                [(r["vm"], f"{r['source']}→{r['destination']}", r["status"],
                  r["total_time_ms"], r["downtime_ms"], r["setup_time_ms"], r["iterations"],
                  mib(r["transferred_bytes"]), r["dirty_rate_pages_s"], len(r["samples"]))
                 for r in results])
