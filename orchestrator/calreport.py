"""The calibration accuracy report: figures as JSON-safe dicts, and predicted-vs-measured PNGs.

Why its own module: `calibrate` (after a fit), `calibrate report` (later, from the store)
and `bench/calibrate.py` must show the same numbers computed the same way. The maths is in
`model.calibration`; this module arranges it and draws it (matplotlib, Agg backend).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.model.calibration import (
    AccuracyReport,
    Comparison,
    MeasuredMigration,
    compare,
    cross_validate,
    eta_error_stats,
    evaluate,
    held_out_flags,
    leave_one_workload_out,
    meets_targets,
    meets_unseen_targets,
    report_rows,
    split_train_held_out,
)
from orchestrator.model.precopy import MIB, Calibration


def _finite(value: Any) -> Any:
    """NaN and ∞ become None in JSON (no data, or a predicted non-convergence)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def summary(records: Sequence[MeasuredMigration], calibration: Calibration,
            every: int) -> dict[str, Any]:
    """Held-out accuracy against the naive baseline, targets, and the non-convergence check.

    Non-converged migrations are split like the converged ones (see
    `split_train_held_out`): the training ones bound the sync cost c, and the
    non-convergence verdict is given over the held-out part and over the whole grid.
    `figures` is the one-line view: each held-out error with the number of migrations
    behind it. `cross_validated` refits
    once per fold so that every migration is held out once (`cross_validate`): the same
    errors over the whole grid rather than one split's ~7 migrations.
    """
    train, held_out = split_train_held_out(records, every)
    report = evaluate(held_out, calibration)
    whole = evaluate(records, calibration)
    flags = held_out_flags(records, every)
    cv = cross_validate(records, every)
    data: dict[str, Any] = _finite({
        "migrations": len(records), "train": len(train), "held_out": len(held_out),
        "held_out_converged": sum(r.converged for r in held_out), "every": every,
        "non_converged": sum(not r.converged for r in records),
        "figures": _figures(report, whole),
        "cross_validated": {"folds": every, **_figures(cv, cv)},
        "held_out_accuracy": _report_dict(report),
        "train_accuracy": _report_dict(evaluate(train, calibration)),
        "non_convergence_all": whole.as_dict()["convergence"],
        "targets": {**meets_targets(report), "non_convergence_all_predicted":
                    whole.convergence.non_converged_predicted
                    == whole.convergence.non_converged},
        "calibration": calibration.to_dict()["parameters"],
        "rows": [_row(c, held)
                 for c, held in zip(compare(records, calibration), flags, strict=True)],
        **unseen(records),
    })
    return data


def unseen(records: Sequence[MeasuredMigration]) -> dict[str, Any]:
    """Leave-one-workload-out figures beside the in-distribution ones, the live ETA's
    errors at 10/25/50/75 % of the elapsed time, and their targets (JSON-safe via
    `_finite` in `summary`)."""
    pooled_rows, by_family = leave_one_workload_out(records)
    pooled = report_rows(pooled_rows)
    eta = eta_error_stats(records)
    half = next((e["p90_pct"] for e in eta if e["share"] == 0.5), math.nan)
    return {
        "families": sorted({r.workload or "idle" for r in records}),
        "leave_one_workload_out": {
            "pooled": _figures(pooled, pooled),
            "by_family": {f: _figures(r, r) for f, r in by_family.items()},
            "rows": [{**_row(c, True), "family": c.measured.workload} for c in pooled_rows],
        },
        "eta": eta,
        "unseen_targets": meets_unseen_targets(pooled, half) if pooled_rows else {},
    }


def _figures(held_out: AccuracyReport, whole: AccuracyReport) -> dict[str, Any]:
    """Held-out MAPE / p90 and n per quantity, the naive baseline beside it; libvirt's
    iteration count as a mean absolute error (a check on the passes the model counts)."""
    def pair(stats: Any, base: Any = None) -> dict[str, Any]:
        out = {"mape_pct": stats.mape, "p90_pct": stats.p90_ape, "n": stats.n}
        if base is not None:
            out.update(naive_mape_pct=base.mape, naive_p90_pct=base.p90_ape, naive_n=base.n)
        return out

    conv = whole.convergence
    return {
        "total_time": pair(held_out.total_time, held_out.baseline_total_time),
        "transferred_bytes": pair(held_out.transferred_bytes,
                                  held_out.baseline_transferred_bytes),
        "downtime": {**pair(held_out.downtime), "mae_ms": held_out.downtime.mae * 1000},
        "iterations": {"mae": held_out.iterations.mae, "n": held_out.iterations.n},
        "non_convergence": {"predicted": conv.non_converged_predicted,
                            "measured": conv.non_converged, "verdicts_right": conv.correct,
                            "n": conv.n},
        "excluded": held_out.excluded,
    }


def _report_dict(report: AccuracyReport) -> dict[str, Any]:
    data = report.as_dict()
    data["downtime"]["mae_ms"] = data["downtime"]["mae"] * 1000
    return data


def _row(c: Comparison, held_out: bool) -> dict[str, Any]:
    m, p = c.measured, c.predicted
    return {
        "label": c.label, "held_out": held_out, "memory_mib": m.memory_bytes / MIB,
        "dirty_pages_s": m.dirty_rate_pages_s,
        "working_set_mib": (m.working_set_bytes or 0) / MIB,
        "bandwidth_mib_s": m.bandwidth_bytes_s / MIB,
        "downtime_limit_ms": m.downtime_limit_s * 1000,
        "footprint_mib": None if m.footprint_bytes is None else m.footprint_bytes / MIB,
        "converged": m.converged, "predicted_converges": p.converges,
        "time_s": m.total_time_s if m.converged else None, "predicted_time_s": p.total_time_s,
        "naive_time_s": c.naive_time_s,
        "bytes_mib": m.transferred_bytes / MIB if m.converged else None,
        "predicted_bytes_mib": p.transferred_bytes / MIB,
        "downtime_ms": m.downtime_s * 1000 if m.converged else None,
        "predicted_downtime_ms": p.downtime_s * 1000,
        "iterations": m.iterations, "predicted_iterations": p.iterations,
    }


def write_lowo_plot(rows: Sequence[dict[str, Any]], out: Path) -> Path | None:
    """Leave-one-workload-out: each family's migrations as predicted by the fit that never
    saw that family, against what was measured (one marker per family)."""
    usable = [r for r in rows if r["time_s"] is not None and r["predicted_time_s"] is not None]
    if not usable:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 5))
    for family in sorted({r["family"] for r in usable}):
        sel = [r for r in usable if r["family"] == family]
        ax.scatter([r["time_s"] for r in sel], [r["predicted_time_s"] for r in sel],
                   label=f"{family} (held out)", alpha=0.8)
    top = max(v for r in usable for v in (r["time_s"], r["predicted_time_s"])) * 1.1
    ax.plot([0, top], [0, top], "k--", linewidth=0.8, label="y = x")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="measured (s)", ylabel="predicted (s)",
           title="Total time, leave-one-workload-out")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = out / "lowo_total_time.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


PLOTS = (  # (file, title, measured key, predicted key, naive key, unit)
    ("total_time.png", "Total migration time", "time_s", "predicted_time_s", "naive_time_s", "s"),
    ("transferred_bytes.png", "Transferred data", "bytes_mib", "predicted_bytes_mib", None, "MiB"),
    ("downtime.png", "Downtime", "downtime_ms", "predicted_downtime_ms", None, "ms"),
)


def write_plots(rows: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """One predicted-vs-measured scatter per quantity, held-out points highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, title, measured, predicted, naive, unit in PLOTS:
        fig, ax = plt.subplots(figsize=(5, 5))
        usable = [r for r in rows if r[measured] is not None and r[predicted] is not None]
        for held, marker, label in ((False, "o", "train"), (True, "s", "held out")):
            sel = [r for r in usable if r["held_out"] == held]
            ax.scatter([r[measured] for r in sel], [r[predicted] for r in sel],
                       marker=marker, label=f"model ({label})", alpha=0.8)
        if naive:
            ax.scatter([r[measured] for r in usable], [r[naive] for r in usable],
                       marker="x", color="grey", label="naive M ÷ r_mig")
        values = [v for r in usable for v in (r[measured], r[predicted])] or [1.0]
        top = max(values) * 1.1
        ax.plot([0, top], [0, top], "k--", linewidth=0.8, label="y = x")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel(f"measured ({unit})")
        ax.set_ylabel(f"predicted ({unit})")
        ax.set_title(title)
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)
    return written
