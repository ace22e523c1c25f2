"""Benchmark: many small proxy VMs on a 3-node lab, migrated concurrently.

Boots `--vms` 128 MiB VMs round-robin over the fog nodes, then for `--rounds` rounds starts
every VM's migration to the next node at once, each in its own thread with its own
connections and records (as separate `orchestrator migrate` processes would). Per-node slots
(`--max-per-node`) queue what exceeds the limit. Checks after every round that each VM runs
exactly once; prints one JSON object.

    .venv/bin/python bench/load.py [--vms 6] [--rounds 2] [--max-per-node 2] [--bandwidth 30]
    .venv/bin/python bench/load.py --vms 6 --grow 3 --max-vms 18   # the most the lab holds
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from orchestrator.edge.migrate import MigrationService
from orchestrator.edge.vms import VmService
from orchestrator.errors import OrchestratorError
from orchestrator.fleet import lab_fleet
from orchestrator.fog.migration import MigrationRequest
from orchestrator.fog.session import FleetSession
from orchestrator.lab.builder import Lab
from orchestrator.lab.topology import LabSpec
from orchestrator.store import open_store

PREFIX = "eload"
NODES = ("fog1", "fog2", "fog3")


def migrate_one(state_dir: Path, vm: str, dest: str, bandwidth: int,
                max_per_node: int) -> dict[str, Any]:
    store = open_store(state_dir)
    try:
        with FleetSession(lab_fleet(state_dir, PREFIX)) as session:
            service = MigrationService(session, store, state_dir, max_per_node=max_per_node)
            started = time.monotonic()
            try:
                result = service.migrate(MigrationRequest(vm, dest, bandwidth_mib_s=bandwidth))
            except OrchestratorError as exc:
                return {"vm": vm, "status": "refused", "error": str(exc)}
            return {"vm": vm, "status": result["status"], "wall_s": time.monotonic() - started,
                    "total_time_ms": result["total_time_ms"], "error": result["error"]}
    finally:
        store.close()


def peak_concurrency(records: list[dict[str, Any]]) -> dict[str, int]:
    """Most migrations a node took part in at the same time, from the records' clocks."""
    peaks: dict[str, int] = {}
    for node in NODES:
        spans = [(r["started_at"], r["finished_at"]) for r in records
                 if node in (r["source"], r["destination"]) and r["finished_at"]]
        events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
        level = best = 0
        for _, step in events:
            level += step
            best = max(best, level)
        peaks[node] = best
    return peaks


def run_round(state_dir: Path, session: FleetSession, names: list[str], r: int,
              args: argparse.Namespace) -> dict[str, Any]:
    """Every VM to the next node at once; what happened, and whether each VM runs once."""
    plan = {n: NODES[(i + r + 1) % 3] for i, n in enumerate(names)}
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        results = list(pool.map(lambda item: migrate_one(
            state_dir, item[0], item[1], args.bandwidth, args.max_per_node), plan.items()))
    wall = time.monotonic() - started
    placed = {n: session.running_on(n) for n in names}
    done = {r["vm"] for r in results if r["status"] == "completed"}
    return {
        "vms": len(names),
        "wall_s": round(wall, 2),
        "completed": len(done),
        "failed": [r for r in results if r["status"] != "completed"],
        "migration_s_median": round(statistics.median(
            [r["total_time_ms"] / 1000 for r in results if r["total_time_ms"]] or [0]), 2),
        "each_vm_runs_once": all(len(p) == 1 for p in placed.values()),
        "where_asked": all(placed[n] == [plan[n]] for n in names if n in done),
    }


def clean(round_: dict[str, Any]) -> bool:
    return bool(round_["completed"] == round_["vms"] and round_["each_vm_runs_once"]
            and round_["where_asked"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vms", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-per-node", type=int, default=2)
    parser.add_argument("--bandwidth", type=int, default=30, help="MiB/s per migration")
    parser.add_argument("--memory", type=int, default=128, help="MiB per VM")
    parser.add_argument("--grow", type=int, default=0, metavar="STEP",
                        help="issue 18: start at --vms, add STEP VMs after every clean round "
                             "until a round is not clean or --max-vms; report the largest "
                             "clean count")
    parser.add_argument("--max-vms", type=int, default=24)
    args = parser.parse_args()
    state_dir = Path(tempfile.mkdtemp(prefix="edgeiot-load-"))
    lab = Lab(LabSpec(prefix=PREFIX, nodes=3, subnet="10.65.0.0/16"), state_dir)
    lab.up()
    names: list[str] = []
    rounds: list[dict[str, Any]] = []
    boot_s: list[float] = []
    try:
        store = open_store(state_dir)
        with FleetSession(lab_fleet(state_dir, PREFIX)) as session:
            vms = VmService(session, store)
            target = args.vms
            try:
                while True:
                    boot_started = time.monotonic()
                    while len(names) < target:
                        name = f"load-{len(names)}"
                        vms.create(name, NODES[len(names) % 3], args.memory)
                        names.append(name)
                    boot_s.append(round(time.monotonic() - boot_started, 1))
                    for _ in range(args.rounds if not args.grow else 1):
                        rounds.append(run_round(state_dir, session, names, len(rounds), args))
                    if not args.grow or not clean(rounds[-1]) or target >= args.max_vms:
                        break
                    target = min(target + args.grow, args.max_vms)
            except OrchestratorError as exc:  # e.g. a VM that no longer boots in time
                rounds.append({"vms": target, "error": str(exc), "completed": 0})
            peaks = peak_concurrency(store.migrations())
            for name in names:
                vms.destroy(name)
        largest = max((r["vms"] for r in rounds if r.get("error") is None and clean(r)),
                      default=0)
        print(json.dumps({"benchmark": "load", "vms": len(names), "memory_mib": args.memory,
                          "max_per_node": args.max_per_node, "bandwidth_mib_s": args.bandwidth,
                          "boot_s": boot_s, "rounds": rounds,
                          "largest_clean_vm_count": largest,
                          "peak_migrations_per_node": peaks,
                          "limit_respected": all(v <= args.max_per_node
                                                 for v in peaks.values())}, indent=2))
    finally:
        lab.down()


if __name__ == "__main__":
    main()
