"""Benchmark: one proxy VM's data plane under TCG. Prints one JSON object.

Brings up its own 1-node lab, boots a proxy VM (128 MiB) and a local application VM per
model (ParkNet, traffic), then runs device emulators inside the fog node at increasing
record rates. For each rate it reports the records per second the proxy accepted,
classified and fed to its models, the guest's dirty-page rate measured by QEMU
(libvirt's dirty-rate calculation, page sampling) next to what the raw ring buffer alone
writes (bytes/s ÷ 4096), and, per application, metadata bytes ÷ raw bytes read. A last
phase starts the missing-child event (an add-on VM on the node) and streams one camera
(32x32 frames, the child in every 5th) at `--camera-rate`, so the face-matching model's
metadata ÷ raw is reported too (`camera`: its records/s and dirty rate).

    EDGEIOT_STATE_DIR=/tmp/h3-bench .venv/bin/python bench/dataplane.py [--rates 5,20,60,150]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import libvirt

from agent.devices import world
from orchestrator.cli import main as cli
from orchestrator.edge.devices import launch_emulator
from orchestrator.edge.proxies import directory_path
from orchestrator.fleet import lab_fleet
from orchestrator.fog.guest_agent import GuestAgent
from orchestrator.lab.builder import Lab
from orchestrator.netguard import check_destination
from orchestrator.store import open_store

PREFIX, SUBNET = "hdata", "10.73.0.0/16"
DEVICES = [("fd00::1", "gps", "car-1"), ("fd00::2", "ultrasonic", "car-1"),
           ("fd00::3", "gps", "car-2"), ("fd00::4", "speed", "car-2"),
           ("fd00::5", "heart-rate", None)]
CAMERA, CHILD = "fd00::6", 4242
SOURCES = [{"kind": "parking", "gps": "fd00::1", "ultrasonic": "fd00::2",
            "street_lat": 40.1, "start_lon": -74.0, "spots": 20},
           {"kind": "drive", "gps": "fd00::3", "speed": "fd00::4",
            "route": [[4010, -7400], [4010, -7399]], "congested": [[4010, -7399]]},
           {"kind": "heart", "device": "fd00::5"}]
CAMERA_SOURCES = [{"kind": "camera", "camera": CAMERA, "lat": 40.1003, "lon": -74.0007,
                   "child": CHILD, "every": 5}]


def run(args: list[str]) -> None:
    if cli(args) != 0:
        raise SystemExit(f"orchestrator {' '.join(args)} failed")


def dirty_rate_mib_s(state_dir: Path, vm: str, seconds: int = 2) -> float | None:
    """QEMU's own dirty-rate estimate for the VM (page sampling), in MiB/s."""
    fleet = lab_fleet(state_dir, PREFIX)
    node = fleet.node("fog1")
    check_destination(node.address, fleet.policy)
    conn = libvirt.open(node.uri)
    try:
        dom = conn.lookupByName(vm)
        dom.startDirtyRateCalc(seconds, 0)
        time.sleep(seconds + 0.5)
        stats = conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_DIRTYRATE)[0][1]
        value = stats.get("dirtyrate.megabytes_per_second")
        return float(value) if value is not None else None
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


def measure(state_dir: Path, proxy: GuestAgent, rate: int, seconds: float,
            tmp: Path, sources: list[dict[str, Any]] = SOURCES,
            devices: int = len(DEVICES), tag: str = "") -> dict[str, Any]:
    spec = {"user": "bench", "rate": rate, "ticks": int(rate * seconds), "drain_s": 30,
            "directory": str(directory_path(state_dir)), "lab_subnet": SUBNET,
            "bridge": "br-vm", "report": str(tmp / f"r{tag}{rate}.json"), "sources": sources}
    before = proxy.request("stream_stats")
    t0 = time.monotonic()
    proc = launch_emulator(Lab.recorded(state_dir, PREFIX).enter_argv("fog1"), spec,
                           tmp / f"s{tag}{rate}.json", tmp / f"e{tag}{rate}.log")
    time.sleep(seconds / 3)
    mid = proxy.request("stream_stats")
    t_mid = time.monotonic()
    dirty = dirty_rate_mib_s(state_dir, "px-bench")
    steady = proxy.request("stream_stats")
    t_steady = time.monotonic()
    proc.wait(timeout=seconds + 120)
    after = proxy.request("stream_stats")
    elapsed = time.monotonic() - t0
    accepted = sum(d["accepted"] for d in after["devices"].values()) - \
        sum(d["accepted"] for d in before["devices"].values())
    window = sum(d["accepted"] for d in steady["devices"].values()) - \
        sum(d["accepted"] for d in mid["devices"].values())
    raw = steady["buffer"]["total_bytes"] - mid["buffer"]["total_bytes"]
    window_s = t_steady - t_mid
    return {"offered_records_s": rate * devices, "accepted": accepted,
            "records_s": round(window / window_s, 1),
            "records_s_whole_run": round(accepted / elapsed, 1),
            "raw_bytes_s": round(raw / window_s), "buffer_pages_s": round(raw / window_s / 4096, 1),
            "qemu_dirty_rate_mib_s": dirty,
            "qemu_dirty_pages_s": round(dirty * 256, 1) if dirty is not None else None}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="5,20,60,150", help="ticks/s; 5 records per tick")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--camera-rate", type=int, default=5, help="frames/s; 0: no camera")
    opts = parser.parse_args()
    state_dir = Path(os.environ.setdefault("EDGEIOT_STATE_DIR", "/tmp/h3-bench-state"))
    os.environ["EDGEIOT_LAB"] = PREFIX
    run(["lab", "up", "--nodes", "1", "--subnet", SUBNET])
    out: dict[str, Any] = {"domain_type": None, "rates": []}
    try:
        run(["user", "add", "bench", "--node", "fog1"])
        for dev, dtype, group in [*DEVICES, (CAMERA, "camera", None)]:
            run(["device", "add", dev, "--user", "bench", "--type", dtype]
                + (["--group", group] if group else []))
        run(["app", "install", "park", "--kind", "parknet", "--node", "fog1"])
        run(["app", "install", "traffic", "--kind", "traffic", "--node", "fog1"])
        store = open_store(state_dir)
        fleet = lab_fleet(state_dir, PREFIX)
        out["domain_type"] = fleet.node("fog1").domain_type
        proxy = GuestAgent(store.vm("px-bench").address, fleet.policy, timeout_s=10)
        with tempfile.TemporaryDirectory() as tmp:
            idle = dirty_rate_mib_s(state_dir, "px-bench")
            out["idle_dirty_rate_mib_s"] = idle
            for rate in [int(r) for r in opts.rates.split(",")]:
                out["rates"].append(measure(state_dir, proxy, rate, opts.seconds, Path(tmp)))
            if opts.camera_rate > 0:
                target = Path(tmp) / "child.pgm"
                target.write_bytes(world.to_pgm(world.face_image(CHILD, variant=10**6)))
                run(["app", "event", "findchild", "--area", "fog1", "--target-image",
                     str(target)])
                out["camera"] = measure(state_dir, proxy, opts.camera_rate, opts.seconds,
                                        Path(tmp), CAMERA_SOURCES, 1, "cam")
        time.sleep(2)
        models = proxy.request("stream_stats")["models"]
        out["metadata_over_raw"] = {
            app: {"raw_bytes": m["raw_bytes"], "meta_bytes": m["meta_bytes"],
                  "ratio": round(m["meta_bytes"] / m["raw_bytes"], 5) if m["raw_bytes"] else None}
            for app, m in models.items()}
        store.close()
    finally:
        cli(["lab", "down"])
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
