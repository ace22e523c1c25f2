"""Decomposition and composition on a real lab (2 fog nodes), with devices streaming.

Alice's proxy VM runs on fog1 (BS b1) with a local traffic application beside it; her
heart-rate sensor stays home, her car (GPS + speedometer) drives to BS b2 (fog2) and back.
One emulator process runs all three devices; when the car roams, its devices' threads
move into fog2's devices namespace (their radio is now behind b2: the connection breaks and
they reconnect from there, to px-alice across the core). The location updates go through
`orchestrator locate` (MME → Eq. 1 → actions applied): the car's roam decomposes the proxy
— a mobile proxy VM boots on fog2, gets the traffic model, and the car's devices are
handed over to it with their stream state, so their records stay on fog2 — and the way
back moves their radios home, reassigns them to px-alice and composes (the mobile VM is
destroyed). At most 3 VMs (128 MiB) are up at once: the proxy, the application VM and the
mobile proxy.

Checks: the decisions and VMs are where the trace says; the directory names the mobile
proxy for the car's devices only while decomposed; the mobile part ran the traffic model;
every record was accepted exactly once (sent == acked == accepted, next == sent + 1, the
proxy's hash chain equal to the device's) with the car's devices served by px-alice, then
px-alice-m, then px-alice again.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import main
from orchestrator.edge.devices import launch_emulator, with_keys
from orchestrator.edge.proxies import directory_path
from orchestrator.errors import ExitStatus
from orchestrator.fog.guest_agent import GuestAgent
from orchestrator.lab.builder import Lab
from orchestrator.lab.topology import DEVICE_LINK
from orchestrator.store import open_store
from tests.integration.conftest import lab_fixture

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

PREFIX, SUBNET = "edcp", "10.67.0.0/16"
lab = lab_fixture(PREFIX, SUBNET, 2)

HR, GPS, SPEED = "fd00::d1", "urn:epc:id:giai:0614141.d.2", "urn:epc:id:giai:0614141.d.3"
CAR = (GPS, SPEED)
EQ1 = ["--r-data", "8"]  # 8 Mb/s per device: Eq. 1 says a mobile part pays off
MOBILE = "px-alice-m"


def cli(*args: str) -> tuple[ExitStatus, Any]:
    """Run the CLI in-process; (status, parsed JSON output or the raw text)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(list(args))
    try:
        return status, json.loads(out.getvalue())
    except ValueError:
        return status, out.getvalue()


def vms_by_node() -> dict[str, str]:
    status, rows = cli("vm", "list", "--json")
    assert status == ExitStatus.SUCCESS
    return {r["name"]: r["node"] for r in rows}


def netns(handle, node: str) -> str:
    """Where a radio behind `node` sits: the node's devices namespace (a setns path)."""
    return Lab.recorded(handle.state_dir, PREFIX).devices_netns(node)


def attach(path: Path, where: dict[str, str]) -> None:
    """Say behind which node each device's radio is (replaced atomically)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(where))
    tmp.replace(path)


def wait_attached(report: Path, devices: tuple[str, ...], ns: str, connects: dict[str, int],
                  timeout_s: float = 30.0) -> None:
    """Until the devices reconnected from namespace `ns`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = read_report(report).get("devices", {})
        if all(now[d]["attached"] == ns and now[d]["connects"] > connects[d]
               and now[d]["unacked"] < 20 for d in devices):
            return
        time.sleep(0.3)
    raise AssertionError(f"{devices} not reconnected from {ns}: {read_report(report)}")


def core_rate(handle, node: str, window_s: float = 6.0) -> float:
    """Bytes per second the node sent into the core over the next `window_s` seconds."""
    lab_ = Lab.recorded(handle.state_dir, PREFIX)
    before = lab_.core_counters()[node]["to_core"]
    time.sleep(window_s)
    return (lab_.core_counters()[node]["to_core"] - before) / window_s


def read_report(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def wait_streaming(path: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        devices = read_report(path).get("devices", {})
        if devices and all(d["acked"] > 0 for d in devices.values()):
            return
        time.sleep(0.5)
    raise AssertionError(f"devices not streaming after {timeout_s} s: {read_report(path)}")


def received(app_vm: GuestAgent) -> list[str]:
    """Every metadata line the application VM received."""
    page = app_vm.request("app_received", offset=0)
    lines = list(page["lines"])
    while page["next"] < page["total"] and page["lines"]:
        page = app_vm.request("app_received", offset=page["next"])
        lines += page["lines"]
    return lines


def locate(device: str, bs: str, *members: str) -> tuple[list[dict[str, Any]], float]:
    """One location update through the control plane; its actions and wall time."""
    args = ["locate", device, "--bs", bs, *(a for m in members for a in ("--member", m))]
    started = time.monotonic()
    status, actions = cli(*args, *EQ1, "--json")
    assert status == ExitStatus.SUCCESS, actions
    return actions, time.monotonic() - started


@pytest.fixture(scope="module")
def run(lab, tmp_path_factory):
    """The whole trip, with what was observed along the way."""
    tmp = tmp_path_factory.mktemp("decompose")
    for args in (["bs", "add", "b1", "--node", "fog1"], ["bs", "add", "b2", "--node", "fog2"],
                 ["user", "add", "alice", "--node", "fog1"],
                 ["device", "add", HR, "--user", "alice", "--type", "heart-rate", "--bs", "fog1",
                  "--mobility", "static"],
                 ["device", "add", GPS, "--user", "alice", "--type", "gps", "--bs", "fog1",
                  "--group", "car-d"],
                 ["device", "add", SPEED, "--user", "alice", "--type", "speed", "--bs", "fog1",
                  "--group", "car-d"],
                 ["app", "install", "traffic", "--kind", "traffic", "--node", "fog1"]):
        status, out = cli(*args)
        assert status == ExitStatus.SUCCESS, (args, out)
    report, radios = tmp / "report.json", tmp / "attachments.json"
    home, away = netns(lab, "fog1"), netns(lab, "fog2")
    attach(radios, dict.fromkeys((HR, *CAR), home))
    spec = {"user": "alice", "rate": 10, "ticks": 100_000, "drain_s": 90,
            "directory": str(directory_path(lab.state_dir)), "lab_subnet": SUBNET,
            "bridge": DEVICE_LINK, "report": str(report), "attachments": str(radios), "sources": [
                {"kind": "drive", "gps": GPS, "speed": SPEED, "seed": 4, "dwell": 20,
                 "route": [[4010, -7400], [4010, -7399], [4011, -7399]]},
                {"kind": "heart", "device": HR}]}
    with contextlib.closing(open_store(lab.state_dir)) as store:
        spec = with_keys(spec, store)  # each device proves its identity with its own key
    enter = Lab.recorded(lab.state_dir, PREFIX).devices_enter_argv("fog1")
    proc = launch_emulator(enter, spec, tmp / "spec.json", tmp / "emulator.log")
    seen: dict[str, Any] = {}
    try:
        wait_streaming(report)
        seen["home"], _ = locate(HR, "b1", *CAR)
        time.sleep(3)
        connects = {d: r["connects"] for d, r in read_report(report)["devices"].items()}
        attach(radios, {HR: home, GPS: away, SPEED: away})  # the car drives to b2
        wait_attached(report, CAR, away, connects)
        seen["roamed"] = read_report(report)["devices"]
        seen["core_roamed_bps"] = core_rate(lab, "fog2")  # the car → px-alice on fog1
        seen["away"], seen["decompose_s"] = locate(GPS, "b2", SPEED)
        seen["vms_away"] = vms_by_node()
        seen["directory_away"] = json.loads(directory_path(lab.state_dir).read_text())
        time.sleep(2)
        seen["core_decomposed_bps"] = core_rate(lab, "fog2")  # the car → px-alice-m, local
        seen["mobile_stats"] = lab.agent(MOBILE).request("stream_stats")
        seen["static_stats_away"] = lab.agent("px-alice").request("stream_stats")
        seen["user_stats_away"] = cli("user", "stats", "alice")[1]
        connects = {d: r["connects"] for d, r in read_report(report)["devices"].items()}
        attach(radios, dict.fromkeys((HR, *CAR), home))  # and back home
        wait_attached(report, CAR, home, connects)
        seen["back"], seen["compose_s"] = locate(GPS, "b1", SPEED)
        seen["vms_back"] = vms_by_node()
        seen["directory_back"] = json.loads(directory_path(lab.state_dir).read_text())
        time.sleep(5)
    finally:
        proc.terminate()  # the emulator drains what is unacknowledged, then reports
        proc.wait(timeout=120)
    seen["report"] = read_report(report)
    seen["stats"] = lab.agent("px-alice").request("stream_stats")
    seen["received"] = received(lab.agent("app-traffic"))
    store = open_store(lab.state_dir)
    try:
        seen["decisions"] = [e["data"] for e in store.events("decision")]
        seen["handovers"] = [e["data"] for e in store.events("handover")]
    finally:
        store.close()
    print("\ndecomposition/composition measurements:", json.dumps(measurements(seen), indent=1))
    return seen


def measurements(seen: dict[str, Any]) -> dict[str, Any]:
    dec = next(a for a in seen["away"] if a["verdict"] == "decompose")["result"]
    devices = seen["report"]["devices"]
    return {"decompose_wall_s": round(seen["decompose_s"], 2), "boot_s": dec.get("boot_s"),
            "compose_wall_s": round(seen["compose_s"], 2),
            "handovers": [{k: h[k] for k in ("from", "to", "prepare_s", "release_s",
                                             "adopt_s", "paused_s")}
                          for h in seen["handovers"]],
            "device_max_gap_s": {d: r["max_gap_s"] for d, r in devices.items()},
            "sent": {d: r["sent"] for d, r in devices.items()},
            "fog2_to_core_Bps": {"roamed, served from fog1": round(seen["core_roamed_bps"]),
                                 "decomposed, served on fog2":
                                     round(seen["core_decomposed_bps"])},
            "accepted_on_mobile": {d: s["accepted"] - p["accepted"] for d, s, p in
                                   ((d, seen["handovers"][1]["progress"][d],
                                     seen["handovers"][0]["progress"][d]) for d in CAR)}}


def test_decomposition_and_composition_happen_where_the_trace_says(run):
    assert [a["verdict"] for a in run["home"]] == []  # first sighting: the proxy is here
    [dec] = run["away"]
    assert (dec["verdict"], dec["proxy"], dec["destination"], dec["into"]) == (
        "decompose", "px-alice", "fog2", MOBILE)
    assert sorted(dec["devices"]) == sorted(CAR) and dec["t_mig_s"] < dec["threshold_s"]
    assert dec["result"]["status"] == "decomposed", dec["result"]
    assert run["vms_away"] == {"px-alice": "fog1", "app-traffic": "fog1", MOBILE: "fog2"}
    assert [(a["verdict"], a["into"], a["result"]["status"]) for a in run["back"]] == [
        ("reassign", "px-alice", "reassigned"), ("compose", "px-alice", "composed")]
    assert run["vms_back"] == {"px-alice": "fog1", "app-traffic": "fog1"}
    logged = [d["verdict"] for d in run["decisions"]]
    assert logged == ["decompose", "reassign", "compose"]


def test_devices_were_told_their_new_proxy(run):
    away = run["directory_away"]
    assert set(away["devices"]) == set(CAR)  # the heart-rate sensor stays with the user entry
    assert {e["vm"] for e in away["devices"].values()} == {MOBILE}
    assert away["users"]["alice"]["vm"] == "px-alice"
    assert "devices" not in run["directory_back"]
    for dev in CAR:
        assert run["report"]["devices"][dev]["served_by"] == ["px-alice", MOBILE, "px-alice"]
    assert run["report"]["devices"][HR]["served_by"] == ["px-alice"]
    assert all(run["roamed"][d]["served_by"] == ["px-alice"] for d in CAR)  # before the update
    assert run["report"]["devices"][HR]["connects"] == 1  # the static sensor never noticed


def test_the_mobile_part_got_the_models_for_its_devices(run):
    mobile = run["mobile_stats"]
    assert set(mobile["devices"]) == set(CAR)  # only the mobile devices' profiles
    assert all(not d["away"] and d["accepted"] > 0 for d in mobile["devices"].values())
    assert list(mobile["models"]) == ["traffic"] and mobile["models"]["traffic"]["emitted"] > 0
    assert run["handovers"][0]["models"] == ["traffic"]
    static = run["static_stats_away"]["devices"]
    assert all(static[d]["away"] for d in CAR) and not static[HR]["away"]
    merged = run["user_stats_away"]["devices"]  # `user stats` shows each part's devices
    assert {d: merged[d]["proxy"] for d in merged} == {HR: "px-alice", GPS: MOBILE,
                                                       SPEED: MOBILE}
    assert not any(s["away"] for s in merged.values())
    srcs = {json.loads(line)["src"] for line in run["received"]}
    assert srcs == {"px-alice", MOBILE}  # metadata from both parts reached the application


def test_every_record_accepted_exactly_once(run):
    report, stats = run["report"], run["stats"]["devices"]
    assert report["status"] == "done"
    for dev in (HR, *CAR):
        sent, got = report["devices"][dev], stats[dev]
        assert sent["sent"] == sent["acked"] == got["accepted"] > 100, (dev, sent, got)
        assert got["next"] == sent["sent"] + 1 and got["invalid"] == 0  # no gap, no skip
        assert got["chain"] == sent["chain"]  # the same records, in order, once
        assert not got["away"]
    first, second = run["handovers"]
    assert (first["from"], first["to"], second["from"], second["to"]) == (
        "px-alice", MOBILE, MOBILE, "px-alice")
    for dev in CAR:  # the mobile proxy accepted a share, continuing where px-alice stopped
        assert second["progress"][dev]["accepted"] > first["progress"][dev]["accepted"] > 0
        assert report["devices"][dev]["max_gap_s"] < 10.0


def test_decomposition_keeps_the_car_streams_off_the_core(run):
    # roamed but still served from fog1, the car's records (and their TCP) cross the core;
    # decomposed, only the mobile part's metadata to the application VM on fog1 does
    raw = sum(r["sent_bytes"] for d, r in run["report"]["devices"].items() if d in CAR)
    per_s = raw / run["report"]["elapsed_s"]
    assert run["core_roamed_bps"] > per_s  # at least the records themselves crossed
    assert run["core_decomposed_bps"] < 0.5 * run["core_roamed_bps"]
