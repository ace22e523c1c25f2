"""`make demo`: a 3-node lab, one proxy VM live-migrated fog1 → fog2 → fog3 → fog1 while its
in-guest agent keeps counting, a table of each migration's figures, then teardown.

Everything goes through the same layers the `orchestrator` command uses; the lab is torn
down even when a step fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator import calibration_store
from orchestrator.context import default_state_dir
from orchestrator.edge.migrate import MigrationService
from orchestrator.edge.vms import VmService
from orchestrator.errors import OrchestratorError
from orchestrator.fleet import lab_fleet
from orchestrator.fog.guest_agent import GuestAgent
from orchestrator.fog.migration import MigrationRequest
from orchestrator.fog.session import FleetSession
from orchestrator.lab.builder import Lab, require_root
from orchestrator.lab.sdn import switchover_mover
from orchestrator.lab.topology import LabSpec
from orchestrator.store import open_store

console = Console(width=None if sys.stdout.isatty() else 120)
VM = "proxy-demo"
HOPS = ("fog2", "fog3", "fog1")


class CounterWatch(threading.Thread):
    """Polls the guest agent during the migrations: the counter must never go backwards."""

    def __init__(self, agent: GuestAgent) -> None:
        super().__init__(daemon=True)
        self.agent = agent
        self.readings: list[tuple[float, int, str]] = []
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            try:
                status = self.agent.status()
                self.readings.append((time.monotonic(), status["counter"], status["boot_id"]))
            except OrchestratorError:
                self.failures += 1  # the switch-over: a short gap is expected

    def longest_gap_ms(self) -> float:
        times = [t for t, _, _ in self.readings]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0) * 1000


def run_demo(state_dir: Path, prefix: str, memory_mib: int, bandwidth: int, core: str) -> int:
    lab = Lab(LabSpec(prefix=prefix, nodes=3, core=core), state_dir)
    console.rule("[bold]edgeIoT lab-in-a-box")
    record = lab.up()
    console.print(f"lab up in {record['up_seconds']:.1f} s: 3 fog nodes, each its own libvirtd "
                  f"(domain type {record['domain_type']}), {core} core")
    try:
        return _migrate_around(lab, state_dir, memory_mib, bandwidth)
    finally:
        removed = lab.down()
        console.print(f"lab down: {removed['processes']} processes ended, "
                      f"{removed['namespaces']} namespaces removed")


def _migrate_around(lab: Lab, state_dir: Path, memory_mib: int, bandwidth: int) -> int:
    fleet = lab_fleet(state_dir, lab.spec.prefix)
    store = open_store(state_dir)
    results: list[dict[str, Any]] = []
    with FleetSession(fleet) as session:
        vm = VmService(session, store).create(VM, "fog1", memory_mib)
        console.print(f"{VM} booted on fog1 at {vm.address}; its agent is counting")
        agent = VmService(session, store).agent(VM)
        watch = CounterWatch(agent)
        watch.start()
        service = MigrationService(session, store, state_dir,
                                   calibration_store.load(state_dir),
                                   on_switchover=switchover_mover(
                                       lab.paths.root, lab.spec.prefix, vm.mac,
                                       lambda msg: console.print(f"[yellow]{msg}")))
        try:
            for hop in HOPS:
                request = MigrationRequest(vm=VM, destination=hop, bandwidth_mib_s=bandwidth)
                results.append(service.migrate(request))
                console.print(f"  → {hop}: {results[-1]['status']}")
        finally:
            watch.stop.set()
            watch.join()
            VmService(session, store).destroy(VM)
    store.close()
    _render(results, watch)
    return 0 if _consistent(results, watch) else 1


def _consistent(results: list[dict[str, Any]], watch: CounterWatch) -> bool:
    counters = [c for _, c, _ in watch.readings]
    boot_ids = {b for _, _, b in watch.readings}
    return (all(r["status"] == "completed" for r in results) and len(boot_ids) == 1
            and counters == sorted(counters) and len(counters) > 1)


def _render(results: list[dict[str, Any]], watch: CounterWatch) -> None:
    table = Table(title="live migrations (pre-copy, libvirt migrateToURI3)")
    for column in ("hop", "status", "total s", "predicted s", "downtime ms", "setup ms",
                   "iterations", "sent MiB", "MiB/s", "samples"):
        table.add_column(column, justify="right")
    for r in results:
        final = r["final"] or {}
        predicted = r.get("predicted_total_time_ms")
        table.add_row(f"{r['source']}→{r['destination']}", r["status"],
                      _fmt(r["total_time_ms"], 1e-3), _fmt(predicted, 1e-3),
                      str(r["downtime_ms"]), str(r["setup_time_ms"]), str(r["iterations"]),
                      _fmt(r["transferred_bytes"], 2**-20),
                      _fmt(final.get("bandwidth_bps"), 2**-20), str(len(r["samples"])))
    console.print(table)
    counters = [c for _, c, _ in watch.readings]
    boot_ids = {b for _, _, b in watch.readings}
    console.print(f"agent: {len(counters)} readings, counter {counters[0] if counters else '-'}"
                  f" → {counters[-1] if counters else '-'}, never backwards: "
                  f"{counters == sorted(counters)}, one boot id: {len(boot_ids) == 1}, "
                  f"longest gap {watch.longest_gap_ms():.0f} ms")


def _fmt(value: float | None, scale: float) -> str:
    return "-" if value is None else f"{value * scale:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", default=default_state_dir())
    parser.add_argument("--prefix", default=os.environ.get("EDGEIOT_LAB", "eiot"))
    parser.add_argument("--memory", type=int, default=256, help="VM memory in MiB")
    parser.add_argument("--bandwidth", type=int, default=50, help="migration MiB/s")
    parser.add_argument("--core", choices=("sdn", "bridge"), default="sdn",
                        help="the lab's core: Open vSwitch + OpenFlow controller, or a bridge")
    args = parser.parse_args(argv)
    try:
        require_root()
        return run_demo(Path(args.state_dir), args.prefix, args.memory, args.bandwidth,
                        args.core)
    except OrchestratorError as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
