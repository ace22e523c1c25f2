"""SDN core vs Linux-bridge core on the same 3-node lab shape; prints JSON.

For each core: TCP throughput fog1 → fog2 (node namespaces, 64 MiB), request/reply latency
(1-byte TCP ping-pong, median and p99 over 500 rounds), a 128 MiB VM's migration time
fog1 → fog2 (and the median over the gap hops), and the client-visible gap (root namespace
polling the guest agent's TCP port 7070 every 50 ms) over five hops without, then five with
a controller flow move at the switch-over (SDN core only). Runs `orchestrator` as a user
would, in its own state dir.

Every migration before the "without" hops runs with --no-flow-move: a move pins the VM's MAC
to a port for a while, and a later hop without a move would measure that stale pin, not MAC
learning. With --migration-mbit R the SDN core meters the migration class at R and every
migration, on both cores, is capped just under R (r_mig), so the cores compare like for like.

    sudo .venv/bin/python bench/sdn.py [--migration-mbit R]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.edge.migrate import metered_bandwidth_mib_s
from orchestrator.fleet import lab_fleet
from orchestrator.fog.guest_agent import GuestAgent
from orchestrator.lab.controller.moves import GapProbe
from orchestrator.store import open_store

PREFIX, SUBNET = "bsdn", "10.63.0.0/16"
VM, VM_ADDRESS, VM_MAC = "benchvm", "10.63.1.1", "52:54:00:3f:01:01"
ORCHESTRATOR = str(Path(sys.executable).parent / "orchestrator")
SINK = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7072)); s.listen(1); print("ready", flush=True)
c, _ = s.accept()
if sys.argv[2] == "echo":
    while (d := c.recv(1)): c.sendall(d)
else:
    while c.recv(1 << 20): pass
"""
SEND = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], 7072)); c.setsockopt(6, 1, 1)
if sys.argv[2] == "echo":
    rtts = []
    for _ in range(500):
        t = time.perf_counter(); c.sendall(b"x"); c.recv(1); rtts.append(time.perf_counter() - t)
    print(" ".join(f"{r:.6f}" for r in rtts))
else:
    total, sent, buf = int(sys.argv[3]), 0, b"m" * 65536
    t = time.perf_counter()
    while sent < total: c.sendall(buf); sent += len(buf)
    c.shutdown(socket.SHUT_WR); c.recv(1); print(sent / (time.perf_counter() - t))
"""


NODES = ("fog1", "fog2", "fog3")
GAP_HOPS = 5
MIGRATE_CAP: list[str] = []  # `orchestrator migrate` options capping the rate (see main)


def cap_options(migration_mbit: float | None) -> list[str]:
    """--bandwidth (whole MiB/s) just under the meter, as `migrate` defaults to on the SDN
    core, given explicitly so the bridge core's migrations run at the same cap."""
    if not migration_mbit:
        return []
    return ["--bandwidth", str(metered_bandwidth_mib_s(migration_mbit))]


def orchestrator(*args: str) -> Any:
    out = subprocess.run([ORCHESTRATOR, *args, "--json"], capture_output=True, text=True,
                         check=True, timeout=600).stdout
    return json.loads(out)


def in_node(node: str, code: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", f"{PREFIX}-{node}", sys.executable, "-c", code, *args]


def node_pair(mode: str, *extra: str) -> str:
    sink = subprocess.Popen(in_node("fog2", SINK, "10.63.0.12", mode), stdout=subprocess.PIPE,
                            text=True)
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        return subprocess.run(in_node("fog1", SEND, "10.63.0.12", mode, *extra),
                              capture_output=True, text=True, check=True, timeout=120).stdout
    finally:
        sink.kill()
        sink.wait()


def migrate_with_gap(state_dir: Path, to: str, move: bool) -> dict[str, Any]:
    """One migration watched by a client polling every 50 ms. With `move`, `orchestrator
    migrate` has the controller move the VM's flows at the switch-over (its default on the
    SDN core); without, the network learns the new place from QEMU's announcement alone."""
    store = open_store(state_dir)
    try:
        key = store.vm_key(VM)
    finally:
        store.close()
    guest = GuestAgent(VM_ADDRESS, lab_fleet(state_dir, PREFIX).policy, timeout_s=0.5, key=key)
    with GapProbe(guest.status) as probe:
        record = orchestrator("migrate", VM, "--to", to, *MIGRATE_CAP,
                              *(() if move else ("--no-flow-move",)))
        time.sleep(1.0)
    return {"gap_ms": round(probe.gap_s() * 1000, 1), "failed_polls": probe.failures,
            "migration_ms": record.get("total_time_ms"), "downtime_ms": record.get("downtime_ms")}


def gap_series(state_dir: Path, move: bool, hops: int) -> dict[str, Any]:
    """Several hops (fog1 → fog2 → fog3 → ...), since one gap says little on a loaded box."""
    runs = [migrate_with_gap(state_dir, NODES[(i + 2) % 3], move) for i in range(hops)]
    times = [r["migration_ms"] for r in runs if r["migration_ms"] is not None]
    return {"gap_ms_median": statistics.median(r["gap_ms"] for r in runs),
            "migration_ms_median": statistics.median(times) if times else None, "runs": runs}


def run_core(core: str, migration_mbit: float | None) -> dict[str, Any]:
    state_dir = Path(tempfile.mkdtemp(prefix=f"bench-sdn-{core}-"))
    os.environ.update(EDGEIOT_STATE_DIR=str(state_dir), EDGEIOT_LAB=PREFIX)
    extra = ["--migration-mbit", str(migration_mbit)] if core == "sdn" and migration_mbit else []
    orchestrator("lab", "up", "--subnet", SUBNET, "--core", core, *extra)
    try:
        rtts = [float(x) for x in node_pair("echo").split()]
        bps = float(node_pair("bulk", str(64 * 2**20)))
        orchestrator("vm", "create", VM, "--node", "fog1", "--memory", "128")
        first = orchestrator("migrate", VM, "--to", "fog2", *MIGRATE_CAP, "--no-flow-move")
        out: dict[str, Any] = {
            "throughput_mib_s": round(bps / 2**20, 1),
            "rtt_median_us": round(statistics.median(rtts) * 1e6, 1),
            "rtt_p99_us": round(sorted(rtts)[int(0.99 * len(rtts))] * 1e6, 1),
            "migration_ms": first.get("total_time_ms"),
            "migration_downtime_ms": first.get("downtime_ms"),
            "gap_without_flow_move": gap_series(state_dir, move=False, hops=GAP_HOPS),
        }
        if core == "sdn":
            out["gap_with_flow_move"] = gap_series(state_dir, move=True, hops=GAP_HOPS)
            out["core_classes"] = orchestrator("core", "stats")["classes"]
        subprocess.run([ORCHESTRATOR, "vm", "destroy", VM], capture_output=True, check=True)
        return out
    finally:
        orchestrator("lab", "down")


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--migration-mbit", type=float, default=None)
    args = parser.parse_args()
    MIGRATE_CAP[:] = cap_options(args.migration_mbit)
    results = {core: run_core(core, args.migration_mbit) for core in ("bridge", "sdn")}
    b, s = results["bridge"], results["sdn"]
    results["sdn_vs_bridge"] = {
        "throughput_ratio": round(s["throughput_mib_s"] / b["throughput_mib_s"], 3),
        "added_rtt_median_us": round(s["rtt_median_us"] - b["rtt_median_us"], 1),
        "migration_time_ratio": round(s["migration_ms"] / b["migration_ms"], 3),
        "migration_time_median_ratio": _ratio(
            s["gap_without_flow_move"]["migration_ms_median"],
            b["gap_without_flow_move"]["migration_ms_median"]),
    }
    results["migration_cap"] = MIGRATE_CAP
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
