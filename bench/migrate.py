"""Benchmark: `orchestrator migrate` against a bare libvirt migrateToURI3, paired runs.

Brings up its own 3-node lab (timed: target ≤ 20 s), boots one VM, then migrates it back
and forth between fog1 and fog2 at a fixed bandwidth cap, alternating `orchestrator migrate
--json` run as a process, as a user runs it (interpreter start-up, imports, its own
connections, reconcile, checks, prediction, job-stats sampling every 200 ms, records,
placement check) with a bare libvirt call using the same flags in this process. Prints one
JSON object; targets (issue 18): orchestrator wall ≤ 1.10 × bare wall, and total time ≤
1.15 × transferred bytes ÷ bandwidth. `--in-process` runs `cli.main` in this process instead
(no start-up or imports: the library's own overhead).

    .venv/bin/python bench/migrate.py [--pairs 4] [--bandwidth 50] [--memory 256] [--in-process]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import libvirt

from agent.guest.edgeiot_agent import wire
from orchestrator import cli
from orchestrator.edge.vms import VmService
from orchestrator.errors import ExitStatus
from orchestrator.fleet import lab_fleet
from orchestrator.fog.migration import MigrationRequest, migration_flags, migration_params
from orchestrator.fog.session import FleetSession
from orchestrator.lab.builder import Lab
from orchestrator.lab.topology import LabSpec
from orchestrator.netguard import check_destination
from orchestrator.store import open_store

VM, PREFIX = "bench-vm", "ebench"
WALL_RATIO_MAX = 1.10  # issue 18: the process a user runs, against a bare migrateToURI3


def bare_migration(session: FleetSession, source: str, dest: str, bandwidth: int) -> dict[str, Any]:
    """libvirt alone: the same flags and parameters, no sampling, no records."""
    request = MigrationRequest(vm=VM, destination=dest, bandwidth_mib_s=bandwidth)
    guest = session.hypervisor(source).lookup(VM)
    assert guest is not None
    dest_node = session.fleet.node(dest)
    started = time.monotonic()
    guest.dom.migrateToURI3(dest_node.uri, migration_params(request), migration_flags(request))
    wall = time.monotonic() - started
    arrived = session.hypervisor(dest).lookup(VM)
    assert arrived is not None
    stats = arrived.dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    return {"wall_s": wall, "total_time_ms": stats.get("time_elapsed"),
            "transferred_bytes": stats.get("data_processed") or stats.get("memory_processed")}


def orchestrated_migration(state_dir: Path, dest: str, bandwidth: int,
                           in_process: bool = False,
                           probe_address: str | None = None) -> dict[str, Any]:
    """`orchestrator migrate --json` as a user runs it: a process of the console script
    (or, with `in_process`, cli.main here). It opens its own libvirt connections,
    reconciles, predicts, samples, records and verifies placement."""
    if probe_address:
        with GapProbe(probe_address) as probe:
            record = orchestrated_migration(state_dir, dest, bandwidth, in_process)
            time.sleep(1.0)
        return {**record, "gap_ms": round(probe.longest_s * 1000, 1),
                "failed_pings": probe.failures}
    argv = ["--state-dir", str(state_dir), "migrate", VM, "--to", dest,
            "--bandwidth", str(bandwidth), "--json"]
    started = time.monotonic()
    if in_process:
        out = io.StringIO()
        with redirect_stdout(out):
            status = cli.main(argv)
        stdout = out.getvalue()
    else:
        script = Path(sys.executable).with_name("orchestrator")
        done = subprocess.run([str(script), *argv], capture_output=True, text=True,
                              env={**os.environ, "EDGEIOT_LAB": PREFIX})
        status, stdout = ExitStatus(done.returncode), done.stdout
    wall = time.monotonic() - started
    result = json.loads(stdout)
    assert status == 0 and result["status"] == "completed", result.get("error")
    return {"wall_s": wall, "total_time_ms": result["total_time_ms"],
            "transferred_bytes": result["transferred_bytes"],
            "downtime_ms": result["downtime_ms"],
            # what the process spent outside libvirt's call: start-up, imports, checks,
            # the pre-migration dirty-rate measurement, records, placement check
            "outside_migration_s": round(wall - result["wall_time_ms"] / 1000, 3)}


class GapProbe:
    """Pings the guest agent every `every_s` with a short timeout while a migration runs,
    and keeps the longest stretch without an answer: the client-visible gap (issue 18).

    NOTE: the gap a client sees is at least its own timeout whenever one request is caught
    by the switch-over (sent to the paused source, or lost while the network moves): a
    0.5 s timeout cannot show a gap below ~0.55 s, and a lost SYN is retried by the kernel
    only after 1 s. A short timeout and an immediate retry measure what the network and the
    guest cost.
    """

    def __init__(self, address: str, timeout_s: float = 0.1, every_s: float = 0.02) -> None:
        self.address, self.timeout_s, self.every_s = address, timeout_s, every_s
        self.last_ok: float | None = None
        self.longest_s = 0.0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GapProbe:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _ping(self) -> bool:
        try:
            with wire.ControlClient(self.address, timeout_s=self.timeout_s) as client:
                return bool(client.call("ping").get("ok"))
        except (OSError, ValueError):
            return False

    def _run(self) -> None:
        while not self._stop.is_set():
            ok = self._ping()
            now = time.monotonic()
            if ok:
                if self.last_ok is not None:
                    self.longest_s = max(self.longest_s, now - self.last_ok)
                self.last_ok = now
            else:
                self.failures += 1
            self._stop.wait(self.every_s)


def summary(runs: list[dict[str, Any]], bandwidth: int) -> dict[str, Any]:
    walls = [r["wall_s"] for r in runs]
    efficiency = [r["total_time_ms"] / 1000 / (r["transferred_bytes"] / (bandwidth * 2**20))
                  for r in runs]
    return {"wall_s_median": round(statistics.median(walls), 3),
            "wall_s": [round(w, 3) for w in walls],
            "total_time_over_bytes_per_bandwidth_median": round(statistics.median(efficiency), 3),
            "wall_over_bytes_per_bandwidth_median": round(statistics.median(
                [r["wall_s"] / (r["transferred_bytes"] / (bandwidth * 2**20)) for r in runs]), 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--bandwidth", type=int, default=50, help="MiB/s")
    parser.add_argument("--memory", type=int, default=256, help="MiB")
    parser.add_argument("--in-process", action="store_true",
                        help="run cli.main in this process (no start-up, no imports)")
    parser.add_argument("--gap-hops", type=int, default=3,
                        help="extra orchestrated migrations watched by a 20 ms ping with a "
                             "100 ms timeout: client-visible gap vs downtime")
    args = parser.parse_args()
    state_dir = Path(tempfile.mkdtemp(prefix="edgeiot-bench-"))
    lab = Lab(LabSpec(prefix=PREFIX, nodes=3, subnet="10.75.0.0/16"), state_dir)
    os.environ["EDGEIOT_LAB"] = PREFIX  # the lab `orchestrator migrate` works on
    started = time.monotonic()
    lab.up()
    lab_up_s = time.monotonic() - started
    try:
        store = open_store(state_dir)
        with FleetSession(lab_fleet(state_dir, PREFIX)) as session:
            VmService(session, store).create(VM, "fog1", args.memory)
            ours, bare = [], []
            here = "fog1"
            for i in range(2 * args.pairs):
                there = "fog2" if here == "fog1" else "fog1"
                # Pairs alternate which goes first, so each method runs each direction
                # equally often: ours, bare | bare, ours | ...
                if (i % 2 == 0) == ((i // 2) % 2 == 0):
                    ours.append(orchestrated_migration(state_dir, there, args.bandwidth,
                                                       args.in_process))
                else:
                    bare.append(bare_migration(session, here, there, args.bandwidth))
                here = there
            address = store.vm(VM).address or ""  # type: ignore[union-attr]
            check_destination(address, session.fleet.policy)  # a lab address, on the bridge
            gaps = []
            for _ in range(args.gap_hops):
                there = "fog2" if here == "fog1" else "fog1"
                gaps.append(orchestrated_migration(state_dir, there, args.bandwidth,
                                                   args.in_process, address))
                here = there
        ours_s, bare_s = summary(ours, args.bandwidth), summary(bare, args.bandwidth)
        ratio = ours_s["wall_s_median"] / bare_s["wall_s_median"]
        efficiency = ours_s["total_time_over_bytes_per_bandwidth_median"]
        print(json.dumps({
            "benchmark": "migrate", "pairs": args.pairs, "bandwidth_mib_s": args.bandwidth,
            "memory_mib": args.memory, "lab_up_s": round(lab_up_s, 3),
            "orchestrator_as": "cli.main in-process" if args.in_process else "a process",
            "orchestrator": ours_s, "bare_libvirt": bare_s,
            "wall_ratio_orchestrator_over_bare": round(ratio, 3),
            "orchestrator_outside_migration_s": [o["outside_migration_s"] for o in ours],
            "wall_ratio_per_pair": [round(o["wall_s"] / b["wall_s"], 3)
                                    for o, b in zip(ours, bare, strict=True)],
            "client_gap": {
                "probe": "ping every 20 ms, 100 ms timeout, bridge core",
                "gap_ms": [g["gap_ms"] for g in gaps],
                "downtime_ms": [g["downtime_ms"] for g in gaps],
                "gap_minus_downtime_ms_median": round(statistics.median(
                    [g["gap_ms"] - (g["downtime_ms"] or 0) for g in gaps]), 1) if gaps else None,
            },
            "targets": {"wall_ratio_max": WALL_RATIO_MAX,
                        "total_time_over_bytes_per_bandwidth_max": 1.15,
                        "lab_up_s_max": 20},
            "targets_met": {"wall_ratio": ratio <= WALL_RATIO_MAX,
                            "total_time_over_bytes_per_bandwidth": efficiency <= 1.15,
                            "lab_up_s": lab_up_s <= 20},
        }, indent=2))
    finally:
        lab.down()


if __name__ == "__main__":
    main()
