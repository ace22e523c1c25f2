"""Benchmark: the migration-time predictor calibrated on real migrations, judged held out.

Brings up its own 2-node lab, runs the calibration grid (the full one, or a subset) through
the same runner as `orchestrator calibrate`, fits on every migration but each `--every`-th,
and prints one JSON object: held-out MAPE / p90 of total time, transferred bytes and
downtime against the naive M ÷ r_mig, non-convergence accuracy, and whether the
in-distribution targets are met (Tmig MAPE ≤ 5 %, p90 ≤ 10 %, bytes within 10 %, every
non-convergence predicted); then leave-one-workload-out figures (each workload family held
out in turn), the live ETA's errors at 10/25/50/75 % of the elapsed time, and the targets
for unseen workloads. The lab is torn down even on failure; PNGs go to --out if given.

    .venv/bin/python bench/calibrate.py [--quick | --grid full|quick|small|families]
                                        [--memory 512 ...] [--max-points N] [--every 3]
                                        [--out DIR]

The full grid is long under TCG (1024 MiB guests at 5 MiB/s): run it once, or a subset.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator import calibration_store, calreport
from orchestrator.edge.calibrate import (
    CalibrationRunner,
    PointResult,
    campaign_measurements,
    campaign_qemu_version,
    grid,
    log_campaign,
    stamped,
)
from orchestrator.fleet import lab_fleet
from orchestrator.fog.session import FleetSession
from orchestrator.lab.builder import Lab
from orchestrator.lab.topology import LabSpec
from orchestrator.model.calibration import UNSEEN_TARGETS, calibrate
from orchestrator.store import open_store

PREFIX, SUBNET = "bcal", "10.81.0.0/16"  # NOTE: no lab test uses 10.81


def progress(done: int, total: int, result: PointResult) -> None:
    p = result.point
    print(f"[{done}/{total}] {p.memory_mib} MiB {p.dirty_pages_s} p/s W={p.working_set_mib} "
          f"{p.bandwidth_mib_s} MiB/s {p.downtime_ms} ms: {result.status}"
          f"{' stalled' if result.stalled else ''} {result.total_time_s or ''}",
          file=sys.stderr, flush=True)


def run(args: argparse.Namespace, state_dir: Path) -> dict[str, Any]:
    points = grid(args.grid, args.memory or None, args.max_points)
    store = open_store(state_dir)
    try:
        with FleetSession(lab_fleet(state_dir, PREFIX)) as session:
            runner = CalibrationRunner(session, store, state_dir)
            started = time.monotonic()
            results = runner.run(points, progress)
            campaign_s = time.monotonic() - started
        log_campaign(store, args.grid, results, args.every)
        ids = [r.record_id for r in results if r.record_id is not None]
        measured = campaign_measurements(store, ids)
        qemu = campaign_qemu_version(store, ids)
    finally:
        store.close()
    fitted = calibrate(measured, args.every)
    calibration = stamped(fitted.calibration, qemu, measured)
    calibration_store.save(calibration, state_dir)
    summary = calreport.summary(measured, calibration, args.every)
    if args.out:
        summary["plots"] = [str(p) for p in calreport.write_plots(summary["rows"],
                                                                  Path(args.out))]
        lowo = calreport.write_lowo_plot(summary["leave_one_workload_out"]["rows"],
                                         Path(args.out))
        summary["plots"] += [str(lowo)] if lowo else []
    statuses = [r.status for r in results]
    return {"benchmark": "calibrate", "grid": args.grid, "memories_mib": sorted(
        {p.memory_mib for p in points}), "points": len(points),
        "statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
        "campaign_s": round(campaign_s, 1), "qemu_version": qemu, **summary,
        "target_values": {"time_mape_pct_max": 5, "time_p90_pct_max": 10,
                          "bytes_mape_pct_max": 10, "non_convergence": "all predicted",
                          "unseen": UNSEEN_TARGETS}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grid", choices=["full", "quick", "small", "families"],
                        default="full")
    parser.add_argument("--quick", action="store_true", help="the quick grid (≤ 10 min)")
    parser.add_argument("--memory", type=int, action="append", help="MiB (repeatable)")
    parser.add_argument("--max-points", type=int, default=None, help="per memory size")
    parser.add_argument("--every", type=int, default=3, help="hold out every N-th")
    parser.add_argument("--out", default=None, help="directory for the PNG plots")
    parser.add_argument("--rows", action="store_true", help="include per-migration rows")
    args = parser.parse_args()
    if args.quick:
        args.grid = "quick"
    state_dir = Path(tempfile.mkdtemp(prefix="edgeiot-bench-cal-"))
    lab = Lab(LabSpec(prefix=PREFIX, nodes=2, subnet=SUBNET), state_dir)
    lab.up()
    try:
        result = run(args, state_dir)
    finally:
        lab.down()
    if not args.rows:
        result.pop("rows", None)
        result["leave_one_workload_out"].pop("rows", None)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
