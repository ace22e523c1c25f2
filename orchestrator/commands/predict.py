"""`orchestrator predict`: how long would a live migration take, and will it finish at all?

Thin on purpose: parse user units (MiB, MiB/s, ms), build `MigrationInputs`, call the pure
model with the active (or given) calibration, render a table or JSON. Input is checked
here in the user's units so the one-line error names the option the user typed.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from orchestrator import calibration_store
from orchestrator.commands._numbers import (
    MIB_MAX,
    MIB_S_MAX,
    MS_MAX,
    PAGES_S_MAX,
    SECONDS_MAX,
    non_negative,
    positive,
)
from orchestrator.errors import UserError
from orchestrator.model.precopy import (
    MIB,
    Calibration,
    MigrationInputs,
    Prediction,
    naive_time_s,
    predict,
)

MAX_ROUNDS_SHOWN = 12
PAGE_SIZE = 4096
MAX_ROUNDS_JSON = 100


@click.command(name="predict")
@click.option("--memory", "memory_mib", type=positive(MIB_MAX), required=True, metavar="MIB",
              help="Guest memory M in MiB.")
@click.option("--dirty-rate", "dirty_pages_s", type=non_negative(PAGES_S_MAX),
              default=None, metavar="PAGES_S",
              help="Guest dirty rate in pages per second (0 for an idle guest).")
@click.option("--measured-dirty-rate", "measured_mib_s", type=non_negative(MIB_S_MAX),
              default=None, metavar="MIB_S",
              help="Instead of --dirty-rate: the hypervisor's page-sampling reading in MiB/s "
                   "(what `migrate` measures and records as dirty_rate_source).")
@click.option("--measured-window", "measured_window_s", type=positive(SECONDS_MAX),
              default=1.0, show_default=True, metavar="S",
              help="The window of --measured-dirty-rate, in seconds.")
@click.option("--bandwidth", "bandwidth_mib_s", type=positive(MIB_S_MAX),
              required=True, metavar="MIB_S",
              help="Migration bandwidth r_mig in MiB/s.")
@click.option("--downtime-ms", type=positive(MS_MAX),
              default=300.0, show_default=True, metavar="MS",
              help="Maximum downtime allowed at switch-over.")
@click.option("--working-set", "working_set_mib", type=positive(MIB_MAX),
              default=None, metavar="MIB",
              help="Writable working set in MiB [default: all of memory].")
@click.option("--footprint", "footprint_mib", type=positive(MIB_MAX), default=None, metavar="MIB",
              help="Non-zero guest memory in MiB [default: the calibration's model].")
@click.option("--calibration", "calibration_file", type=click.Path(dir_okay=False),
              default=None, metavar="FILE",
              help="Calibration JSON [default: <state-dir>/calibration.json, else built-in].")
@click.option("--qemu", "qemu_version", default=None, metavar="VERSION",
              help="QEMU the migration would run on [default: this machine's].")
@click.option("--force", is_flag=True,
              help="Use a calibration fitted on another QEMU version anyway.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def command(ctx: click.Context, memory_mib: float, dirty_pages_s: float | None,
            measured_mib_s: float | None, measured_window_s: float, bandwidth_mib_s: float,
            downtime_ms: float,
            working_set_mib: float | None, footprint_mib: float | None,
            calibration_file: str | None, qemu_version: str | None, force: bool,
            as_json: bool) -> None:
    """Predict a pre-copy live migration: time, bytes, iterations, downtime."""
    rate = _dirty_pages_s(dirty_pages_s, measured_mib_s)
    inputs = _inputs(memory_mib, rate, bandwidth_mib_s, downtime_ms,
                     working_set_mib, footprint_mib)
    if measured_mib_s is not None:
        inputs = replace(inputs, dirty_window_s=measured_window_s)
    calibration = calibration_store.load(ctx.obj.state_dir, calibration_file)
    warning = calibration_store.check_qemu(
        calibration, qemu_version or calibration_store.local_qemu_version(), force)
    if warning:
        click.echo(f"orchestrator: warning: {warning}", err=True)
    prediction = predict(inputs, calibration)
    if as_json:
        click.echo(json.dumps(_as_json(inputs, prediction, calibration), indent=2))
    else:
        _render(inputs, prediction, calibration)


def _dirty_pages_s(pages_s: float | None, measured_mib_s: float | None) -> float:
    """Exactly one of --dirty-rate (pages/s) and --measured-dirty-rate (MiB/s)."""
    if (pages_s is None) == (measured_mib_s is None):
        raise UserError("give exactly one of --dirty-rate PAGES_S and --measured-dirty-rate "
                        "MIB_S")
    return pages_s if pages_s is not None else float(measured_mib_s or 0) * MIB / PAGE_SIZE


def _inputs(memory_mib: float, dirty_pages_s: float, bandwidth_mib_s: float,
            downtime_ms: float, working_set_mib: float | None,
            footprint_mib: float | None) -> MigrationInputs:
    """Validate in the user's units, then convert; the model re-checks in bytes."""
    _check(memory_mib > 0, f"--memory must be > 0 MiB, got {memory_mib:g}")
    _check(dirty_pages_s >= 0, f"--dirty-rate must be >= 0 pages/s, got {dirty_pages_s:g}")
    _check(bandwidth_mib_s > 0, f"--bandwidth must be > 0 MiB/s, got {bandwidth_mib_s:g}")
    _check(downtime_ms > 0, f"--downtime-ms must be > 0, got {downtime_ms:g}")
    for option, value in (("--working-set", working_set_mib), ("--footprint", footprint_mib)):
        if value is not None:
            _check(0 < value <= memory_mib,
                   f"{option} must be > 0 and <= --memory ({memory_mib:g} MiB), got {value:g}")
    try:
        return MigrationInputs(
            memory_bytes=_bytes(memory_mib),
            dirty_rate_pages_s=dirty_pages_s,
            bandwidth_bytes_s=bandwidth_mib_s * MIB,
            downtime_limit_s=downtime_ms / 1000,
            working_set_bytes=None if working_set_mib is None else _bytes(working_set_mib),
            footprint_bytes=None if footprint_mib is None else _bytes(footprint_mib),
        )
    except ValueError as exc:  # NaN, inf and the like
        raise UserError(str(exc)) from None


def _check(condition: bool, message: str) -> None:
    # NOTE: written so that NaN fails every check (all comparisons with NaN are False)
    if not condition:
        raise UserError(message)


def _bytes(mib: float) -> int:
    return max(1, round(mib * MIB))


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _as_json(inputs: MigrationInputs, prediction: Prediction,
             calibration: Calibration) -> dict[str, Any]:
    data = prediction.as_dict()
    data["rounds_total"] = len(prediction.rounds)
    data["rounds"] = data["rounds"][:MAX_ROUNDS_JSON]
    return {
        "inputs": {
            "memory_bytes": inputs.memory_bytes,
            "dirty_rate_pages_s": inputs.dirty_rate_pages_s,
            "bandwidth_bytes_s": inputs.bandwidth_bytes_s,
            "downtime_limit_s": inputs.downtime_limit_s,
            "working_set_bytes": inputs.working_set_bytes,
            "footprint_bytes": inputs.footprint_bytes,
            "page_size": inputs.page_size,
            "dirty_window_s": inputs.dirty_window_s,
        },
        "prediction": data,
        "naive_time_s": _json_number(naive_time_s(inputs)),
        "calibration": {"source": calibration.source, "fitted_on": calibration.fitted_on},
    }


def _render(inputs: MigrationInputs, p: Prediction, calibration: Calibration) -> None:
    console = Console()
    summary = Table(title="Predicted live migration (pre-copy)", show_header=False)
    summary.add_column("quantity", style="bold")
    summary.add_column("value", justify="right")
    for name, value in _summary_rows(inputs, p, calibration):
        summary.add_row(name, value)
    console.print(summary)
    console.print(_rounds_table(p))
    if not p.converges:
        console.print(f"[bold red]{p.reason}[/]", soft_wrap=True)


def _summary_rows(inputs: MigrationInputs, p: Prediction,
                  calibration: Calibration) -> list[tuple[str, str]]:
    footprint_from = "given" if inputs.footprint_bytes is not None else "model"
    return [
        ("converges", "yes" if p.converges else "[red]no[/]"),
        ("total time", _pm(p.total_time_s, p.total_time_uncertainty_s, "s")),
        ("transferred", _pm(p.transferred_bytes / MIB, p.transferred_bytes_uncertainty / MIB,
                            "MiB")),
        ("downtime" if p.converges else "downtime if forced",
         _pm(p.downtime_s * 1000, p.downtime_uncertainty_s * 1000, "ms", 0)),
        ("iterations (libvirt)", str(p.iterations)),
        ("switch-over threshold", f"{p.switchover_threshold_bytes / MIB:.1f} MiB"),
        ("effective bandwidth", f"{p.effective_bandwidth_bytes_s / MIB:.1f} MiB/s"),
        ("footprint", f"{p.footprint_bytes / MIB:.0f} MiB ({footprint_from})"),
        ("naive M ÷ r_mig", f"{naive_time_s(inputs):.2f} s"),
        ("calibration", calibration.source),
    ]


def _pm(value: float, spread: float, unit: str, digits: int = 2) -> str:
    if not math.isfinite(value):
        return "never (see below)"
    if not math.isfinite(spread):
        return f"{value:.{digits}f} {unit}, unbounded (near the convergence edge)"
    return f"{value:.{digits}f} ± {spread:.{digits}f} {unit}"


def _rounds_table(p: Prediction) -> Table:
    table = Table(title="Rounds")
    for name in ("round", "starts (s)", "lasts (s)", "sends (MiB)", "dirtied (MiB)"):
        table.add_column(name, justify="right")
    for r in p.rounds[:MAX_ROUNDS_SHOWN]:
        table.add_row(str(r.index), f"{r.start_s:.2f}", f"{r.duration_s:.2f}",
                      f"{r.sent_bytes / MIB:.1f}", f"{r.dirtied_bytes / MIB:.1f}")
    if len(p.rounds) > MAX_ROUNDS_SHOWN:
        table.add_row("…", "", "", f"{len(p.rounds) - MAX_ROUNDS_SHOWN} more rounds", "")
    final = "stop-and-copy" if p.converges else "(never: keeps iterating)"
    table.add_row(final, "", f"{p.downtime_s:.2f}" if p.converges else "",
                  f"{p.stop_copy_wire_bytes / MIB:.1f}" if p.converges else "", "")
    return table
