"""`orchestrator calibrate [--quick]`, `calibrate report|fit`, `calibrate export|import FILE`.

Thin: the campaign is `edge.calibrate`, the fit `model.calibration`, the report
`calreport`. Input (grid points, sizes, split) is checked before anything touches a fog
node, so bad input is a one-line error with exit status 2 and nothing runs.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import click

from orchestrator import calibration_store, calreport
from orchestrator.commands._common import (
    app,
    console,
    fleet_session,
    inventory_option,
    print_json,
    print_table,
    store,
)
from orchestrator.commands._numbers import MIB_MAX, count
from orchestrator.edge.calibrate import (
    CalibrationRunner,
    GridPoint,
    PointResult,
    campaign_measurements,
    campaign_qemu_version,
    grid,
    latest_campaign,
    log_campaign,
    stamped,
)
from orchestrator.errors import OrchestratorError, UserError
from orchestrator.model.calibration import calibrate as fit

MAX_POINT_VALUE = 10_000_000  # beyond any guest, dirty rate, link or downtime we can run


def parse_point(text: str) -> GridPoint:
    """`MIB,PAGES_S,WS_MIB,BW_MIB_S,DOWNTIME_MS` → GridPoint (one-line error otherwise)."""
    parts = text.split(",")
    if len(parts) != 5:
        raise UserError(f"--point wants MIB,PAGES_S,WS_MIB,BW_MIB_S,DOWNTIME_MS, got {text!r}")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"--point values must be integers, got {text!r}") from None
    if any(v > MAX_POINT_VALUE for v in values):
        raise UserError(f"--point values must be at most {MAX_POINT_VALUE}, got {text!r}")
    return GridPoint(*values)


def choose_grid(quick: bool, kind: str | None, points: tuple[str, ...],
                memories: tuple[int, ...], max_points: int | None) -> list[GridPoint]:
    """Explicit points win; else the named grid (quick by default with --quick, else full)."""
    for memory in memories:
        if memory <= 0:
            raise UserError(f"--memory must be > 0 MiB, got {memory}")
        if memory > MIB_MAX:
            raise UserError(f"--memory must be at most {MIB_MAX} MiB, got {memory}")
    if points:
        return [parse_point(p) for p in points]
    return grid(kind or ("quick" if quick else "full"), memories or None, max_points)


def _check_every(every: int) -> None:
    if every < 2:
        raise UserError(f"--every must be >= 2 (something must train), got {every}")


@click.group("calibrate", invoke_without_command=True)
@click.option("--quick", is_flag=True, help="The quick grid: ~20 migrations, 128-256 MiB.")
@click.option("--grid", "kind", type=click.Choice(["quick", "small", "families", "full"]),
              default=None,
              help="Named grid [default: full, or quick with --quick].")
@click.option("--point", "points", multiple=True,
              metavar="MIB,PAGES_S,WS_MIB,BW_MIB_S,DOWNTIME_MS",
              help="Run these points instead of a named grid (repeatable).")
@click.option("--memory", "memories", type=int, multiple=True, metavar="MIB",
              help="Keep only these memory sizes of the grid (repeatable).")
@click.option("--max-points", type=count(1, 100_000),
              default=None, help="First N points per memory size.")
@click.option("--every", type=count(1, 100_000), default=2, show_default=True,
              help="Hold out every N-th migration from the fit.")
@click.option("--nodes", default="fog1,fog2", show_default=True,
              help="The two fog nodes the VMs travel between.")
@inventory_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def command(ctx: click.Context, quick: bool, kind: str | None, points: tuple[str, ...],
            memories: tuple[int, ...], max_points: int | None, every: int, nodes: str,
            inventory: str | None, as_json: bool) -> None:
    """Calibrate the migration-time predictor on a grid of real migrations."""
    if ctx.invoked_subcommand is not None:
        return
    chosen = choose_grid(quick, kind, points, memories, max_points)
    _check_every(every)
    pair = tuple(n.strip() for n in nodes.split(","))
    if len(pair) != 2 or pair[0] == pair[1] or not all(pair):
        raise UserError(f"--nodes wants two different fog nodes, got {nodes!r}")
    label = "custom" if points else (kind or ("quick" if quick else "full"))
    summary = run_campaign(ctx, chosen, every, (pair[0], pair[1]), inventory, label)
    if as_json:
        print_json(summary)
    else:
        render_summary(summary)


def run_campaign(ctx: click.Context, points: list[GridPoint], every: int,
                 nodes: tuple[str, str], inventory: str | None, kind: str) -> dict[str, Any]:
    """Run, fit, save, log; the summary carries the held-out report. Progress goes to
    stderr in every mode (JSON stays clean on stdout)."""
    state = app(ctx).state_path
    started = time.monotonic()
    with fleet_session(ctx, inventory) as session, store(ctx) as records:
        runner = CalibrationRunner(session, records, state, nodes,
                                   calibration_store.load(state),
                                   notify=lambda line: click.echo(line, err=True))
        results = runner.run(points, _progress)
        log_campaign(records, kind, results, every)
        ids = [r.record_id for r in results if r.record_id is not None]
        measured = campaign_measurements(records, ids)
        qemu = campaign_qemu_version(records, ids)
    try:
        fitted = fit(measured, every)
    except ValueError as exc:
        raise OrchestratorError(f"cannot fit the calibration: {exc}") from None
    calibration = stamped(fitted.calibration, qemu, measured)
    path = calibration_store.save(calibration, state)
    summary = calreport.summary(measured, calibration, every)
    return {"grid": kind, "duration_s": round(time.monotonic() - started, 1),
            "calibration_file": str(path), "warm_up": runner.warm_up,
            "points": [r.as_dict() for r in results],
            **summary}


def _progress(done: int, total: int, result: PointResult) -> None:
    p = result.point
    click.echo(f"[{done}/{total}] {p.memory_mib} MiB, {p.dirty_pages_s} pages/s on "
               f"{p.working_set_mib} MiB, {p.bandwidth_mib_s} MiB/s, {p.downtime_ms} ms: "
               f"{result.status}{' (stalled)' if result.stalled else ''}"
               f"{f' in {result.total_time_s:.1f} s' if result.total_time_s else ''}"
               f"{f' — {result.note}' if result.note and result.status != 'completed' else ''}",
               err=True)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render_summary(summary: dict[str, Any]) -> None:
    acc = summary["held_out_accuracy"]
    rows = []
    for name, key, base in (("total time", "total_time", "baseline_total_time"),
                            ("transferred bytes", "transferred_bytes",
                             "baseline_transferred_bytes"),
                            ("downtime", "downtime", None)):
        stats = acc[key]
        naive = acc[base] if base else {}
        rows.append((name, stats["n"], _fmt(stats["mape"]), _fmt(stats["p90_ape"]),
                     _fmt(naive.get("mape")), _fmt(naive.get("p90_ape"))))
    print_table(f"held-out accuracy ({summary['held_out']} of {summary['migrations']} "
                f"migrations)", ["quantity", "n", "MAPE %", "p90 %", "naive MAPE %",
                                 "naive p90 %"], rows)
    cv = summary["cross_validated"]
    console.print(f"cross-validated ({cv['folds']} folds, every migration held out once): "
                  f"total time MAPE {_fmt(cv['total_time']['mape_pct'])} %, p90 "
                  f"{_fmt(cv['total_time']['p90_pct'])} %; bytes "
                  f"{_fmt(cv['transferred_bytes']['mape_pct'])} %; non-convergence "
                  f"{cv['non_convergence']['predicted']} of {cv['non_convergence']['measured']}"
                  f" predicted, {cv['non_convergence']['verdicts_right']} of "
                  f"{cv['non_convergence']['n']} verdicts right")
    conv = summary["non_convergence_all"]
    console.print(f"non-convergence: {conv['non_converged_predicted']} of "
                  f"{conv['non_converged']} predicted; {conv['correct']} of {conv['n']} "
                  f"verdicts right")
    render_unseen(summary)
    targets = summary["targets"]
    console.print("targets: " + ", ".join(f"{k} {'ok' if v else 'MISSED'}"
                                          for k, v in targets.items()))
    if "calibration_file" in summary:
        console.print(f"calibration saved to {summary['calibration_file']} "
                      f"({summary.get('duration_s', '?')} s)")


def render_unseen(summary: dict[str, Any]) -> None:
    """Leave-one-workload-out and the live ETA's errors, one line each."""
    lowo = summary.get("leave_one_workload_out") or {}
    pooled = lowo.get("pooled")
    if pooled and pooled["total_time"]["n"]:
        fams = ", ".join(f"{f} {_fmt(r['total_time']['mape_pct'])} %"
                         for f, r in sorted(lowo["by_family"].items()))
        console.print(f"leave-one-workload-out (families {', '.join(summary['families'])}): "
                      f"total time MAPE {_fmt(pooled['total_time']['mape_pct'])} %, p90 "
                      f"{_fmt(pooled['total_time']['p90_pct'])} %; bytes "
                      f"{_fmt(pooled['transferred_bytes']['mape_pct'])} %; downtime "
                      f"{_fmt(pooled['downtime']['mape_pct'])} %; by family: {fams}")
    else:
        console.print("leave-one-workload-out: needs migrations of two or more workload "
                      "families")
    eta = [e for e in summary.get("eta") or [] if e["n"]]
    if eta:
        console.print("live ETA |error| vs the real time left: " + "; ".join(
            f"at {e['share'] * 100:.0f} % mean {_fmt(e['mean_pct'])} %, p90 "
            f"{_fmt(e['p90_pct'])} % (n {e['n']:.0f})" for e in eta))


@command.command("report")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write predicted-vs-measured PNGs here [default: <state-dir>/calibration].")
@click.option("--calibration", "calibration_file", type=click.Path(dir_okay=False),
              default=None, help="Judge this calibration [default: the active one].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def report(ctx: click.Context, out_dir: str | None, calibration_file: str | None,
           as_json: bool) -> None:
    """Accuracy on the latest campaign's held-out migrations, with PNG plots."""
    state = app(ctx).state_path
    calibration = calibration_store.load(state, calibration_file)
    with store(ctx) as records:
        campaign = latest_campaign(records)["data"]
        measured = campaign_measurements(records, campaign["record_ids"])
    if not measured:
        raise UserError("the latest calibration campaign has no usable migrations")
    summary = calreport.summary(measured, calibration, int(campaign.get("every", 3)))
    out = Path(out_dir) if out_dir else state / "calibration"
    summary["plots"] = [str(p) for p in calreport.write_plots(summary["rows"], out)]
    lowo_plot = calreport.write_lowo_plot(summary["leave_one_workload_out"]["rows"], out)
    if lowo_plot:
        summary["plots"].append(str(lowo_plot))
    if as_json:
        print_json(summary)
    else:
        render_summary(summary)
        console.print("plots: " + ", ".join(summary["plots"]))


@command.command("fit")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def refit(ctx: click.Context, as_json: bool) -> None:
    """Refit on the latest campaign's records (no new migrations) and save the result.

    Why: the records outlive the code; a better model or record reader is judged on the
    same migrations without running the grid again.
    """
    state = app(ctx).state_path
    with store(ctx) as records:
        campaign = latest_campaign(records)["data"]
        measured = campaign_measurements(records, campaign["record_ids"])
        qemu = campaign_qemu_version(records, campaign["record_ids"])
    every = int(campaign.get("every", 3))
    try:
        fitted = fit(measured, every)
    except ValueError as exc:
        raise OrchestratorError(f"cannot fit the calibration: {exc}") from None
    calibration = stamped(fitted.calibration, qemu, measured)
    path = calibration_store.save(calibration, state)
    summary = {"calibration_file": str(path), **calreport.summary(measured, calibration,
                                                                   every)}
    if as_json:
        print_json(summary)
    else:
        render_summary(summary)


@command.command("export")
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_context
def export(ctx: click.Context, file: str) -> None:
    """Copy the active calibration to FILE (JSON), so it can travel to another lab."""
    path = calibration_store.export_to(app(ctx).state_path, file)
    click.echo(f"calibration exported to {path}")


@command.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_context
def import_(ctx: click.Context, file: str) -> None:
    """Make the calibration in FILE the active one (validated first)."""
    calibration = calibration_store.import_from(file, app(ctx).state_path)
    click.echo(f"calibration imported from {file} ({calibration.source})")
