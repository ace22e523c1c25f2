"""The fault matrix (issue 8) on a real lab: every case ends with the VM running exactly
once, no leftover domain, a record that says what happened, and the user's device streams
still flowing into the proxy with no gap; at the end every record sent through all the
faults was accepted exactly once.

One lab for the module (3 fog nodes, 400 MiB of VM memory each) and one 128 MiB proxy VM
whose two devices stream from fog1 throughout. Faults are injected while a
bandwidth-capped migration runs in a separate `orchestrator` process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from orchestrator.edge.devices import launch_emulator, with_keys
from orchestrator.edge.proxies import directory_path
from orchestrator.errors import ExitStatus
from orchestrator.fleet import lab_fleet
from orchestrator.fog.session import FleetSession
from orchestrator.lab.builder import Lab
from orchestrator.lab.topology import DEVICE_LINK
from orchestrator.store import open_store
from tests.integration.conftest import lab_fixture

pytestmark = pytest.mark.lab

PREFIX, SUBNET = "efault", "10.70.0.0/16"
lab = lab_fixture(PREFIX, SUBNET, 3, "--node-memory", "400")
USER, VM = "alice", "px-alice"
DEVICES = ("fd00::f1", "fd00::f2")  # heart-rate sensors at fog1's base station
STREAM_RATE = 4  # records per second per device
SLOW = "6"  # MiB/s: a 128 MiB guest takes ~12 s, time enough to strike


def orchestrator(lab_handle, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "EDGEIOT_STATE_DIR": str(lab_handle.state_dir),
           "EDGEIOT_LAB": PREFIX}
    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 90) -> tuple[int, dict, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, (json.loads(out) if out.strip() else {}), err


def wait_until_moving(cli, timeout: float = 30) -> None:
    """Until the running migration's record shows bytes on the wire."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = cli("migrations", "--status", "running", "--samples", "--json").json()
        if running and any(s["processed_bytes"] > 0 for s in running[0]["samples"]):
            return
        time.sleep(0.2)
    raise AssertionError("the migration never started moving data")


def world(lab_handle) -> tuple[list[str], list[str]]:
    """(nodes where the VM runs, nodes holding any other copy of it)."""
    with FleetSession(lab_fleet(lab_handle.state_dir, PREFIX)) as session:
        guests = session.locate(VM)
        return ([g.node for g in guests if g.is_running()],
                [g.node for g in guests if not g.is_running()])


def assert_runs_once(lab_handle, where: str | None = None, settle_s: float = 45) -> None:
    """Exactly one running copy and no leftover, allowing libvirt time to clean up."""
    deadline = time.monotonic() + settle_s
    while True:
        running, others = world(lab_handle)
        if len(running) == 1 and not others:
            break
        assert time.monotonic() < deadline, f"running on {running}, leftovers on {others}"
        time.sleep(1)
    if where:
        assert running == [where]


def node_entry(lab_handle, node: str) -> dict:
    state = json.loads((lab_handle.state_dir / "labs" / PREFIX / "lab.json").read_text())
    return next(e for e in state["nodes"] if e["name"] == node)


def latest(cli) -> dict:
    return cli("migrations", "--json", "--limit", "1").json()[0]


def accepted(lab_handle, cli) -> dict[str, dict]:
    stats = lab_handle.agent(VM).request("stream_stats")["devices"]
    return {dev: stats[dev] for dev in DEVICES}


@pytest.fixture(scope="module")
def stream(lab, tmp_path_factory) -> Iterator[dict]:
    """The user's proxy on fog1 and an emulator streaming its two devices from fog1."""
    from orchestrator.cli import main
    assert main(["user", "add", USER, "--node", "fog1"]) == ExitStatus.SUCCESS
    for dev in DEVICES:
        assert main(["device", "add", dev, "--user", USER, "--type", "heart-rate",
                     "--bs", "fog1", "--mobility", "static"]) == ExitStatus.SUCCESS
    tmp = tmp_path_factory.mktemp("fault-stream")
    spec = {"user": USER, "rate": STREAM_RATE, "ticks": 10**6, "drain_s": 60,
            "directory": str(directory_path(lab.state_dir)), "lab_subnet": SUBNET,
            "bridge": DEVICE_LINK, "report": str(tmp / "report.json"),
            "sources": [{"kind": "heart", "device": dev} for dev in DEVICES]}
    store = open_store(lab.state_dir)
    try:
        spec = with_keys(spec, store)  # each device proves its identity with its own key
    finally:
        store.close()
    enter = Lab.recorded(lab.state_dir, PREFIX)
    proc = launch_emulator(enter.devices_enter_argv("fog1"), spec, tmp / "spec.json",
                           tmp / "emulator.log")
    try:
        yield {"proc": proc, "report": tmp / "report.json"}
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=90)


def assert_stream_flows(lab_handle, cli, timeout_s: float = 60) -> None:
    """Every device's records are being accepted again, in sequence: a gap would stall
    the device for good (the proxy only takes the next sequence number)."""
    before = accepted(lab_handle, cli)
    deadline = time.monotonic() + timeout_s
    while True:
        now = accepted(lab_handle, cli)
        if all(now[d]["accepted"] >= before[d]["accepted"] + 2 * STREAM_RATE for d in DEVICES):
            break
        assert time.monotonic() < deadline, f"device streams stalled: {now}"
        time.sleep(1)
    for dev, state in now.items():
        assert state["next"] == state["accepted"] + 1 and state["invalid"] == 0, (dev, state)


def test_setup_vm(lab, cli, stream):
    assert_runs_once(lab, "fog1")
    assert_stream_flows(lab, cli)


def test_refused_when_the_destination_lacks_memory(lab, cli, stream):
    filler = cli("vm", "create", "filler", "--node", "fog3", "--memory", "288", "--wait", "0")
    assert filler.status == ExitStatus.SUCCESS, filler.err
    try:
        before = cli("migrations", "--json").json()
        result = cli("migrate", VM, "--to", "fog3")
        assert result.status == ExitStatus.BAD_INPUT
        assert "fog3 has not enough free memory" in result.err
        assert cli("migrations", "--json").json() == before  # refused before anything moved
        too_big = cli("vm", "create", "huge", "--node", "fog2", "--memory", "512")
        assert too_big.status == ExitStatus.BAD_INPUT and "not enough free memory" in too_big.err
    finally:
        cli("vm", "destroy", "filler")
    assert_runs_once(lab, "fog1")
    assert_stream_flows(lab, cli)


def test_second_migration_of_the_same_vm_is_refused(lab, cli, stream):
    first = orchestrator(lab, "migrate", VM, "--to", "fog2", "--bandwidth", SLOW, "--json")
    try:
        wait_until_moving(cli)
        second = cli("migrate", VM, "--to", "fog3")
        assert second.status == ExitStatus.BAD_INPUT
        assert "already running" in second.err
    finally:
        rc, record, err = finish(first)
    assert rc == 0, err
    assert record["status"] == "completed"
    assert_runs_once(lab, "fog2")
    assert_stream_flows(lab, cli)


def test_core_link_cut_mid_migration(lab, cli, stream):
    proc = orchestrator(lab, "migrate", VM, "--to", "fog3", "--bandwidth", SLOW,
                        "--timeout", "10", "--json")
    link = f"{PREFIX}-fog3c"
    try:
        wait_until_moving(cli)
        subprocess.run(["ip", "link", "set", link, "down"], check=True)
        rc, record, err = finish(proc)
    finally:
        subprocess.run(["ip", "link", "set", link, "up"], check=True)
    assert rc == ExitStatus.ERROR, err
    assert record["status"] in ("aborted", "failed")
    assert record["placement"] == ["fog2"]
    assert latest(cli)["status"] == record["status"]
    assert_runs_once(lab, "fog2")
    assert_stream_flows(lab, cli)


def test_destination_libvirtd_killed_mid_migration(lab, cli, stream):
    proc = orchestrator(lab, "migrate", VM, "--to", "fog1", "--bandwidth", SLOW, "--json")
    wait_until_moving(cli)
    os.kill(node_entry(lab, "fog1")["libvirtd_pid"], signal.SIGKILL)
    rc, record, err = finish(proc)
    assert rc == ExitStatus.ERROR, err
    assert record["status"] == "failed" and record["placement"] == ["fog2"]
    assert cli("lab", "restart-libvirtd", "fog1").status == ExitStatus.SUCCESS
    assert_runs_once(lab, "fog2")  # the restarted libvirtd drops the half-made incoming VM
    assert_stream_flows(lab, cli)


def test_source_libvirtd_restarted_mid_migration(lab, cli, stream):
    proc = orchestrator(lab, "migrate", VM, "--to", "fog1", "--bandwidth", SLOW, "--json")
    wait_until_moving(cli)
    assert cli("lab", "restart-libvirtd", "fog2").status == ExitStatus.SUCCESS
    rc, record, err = finish(proc)
    assert rc == ExitStatus.ERROR, err
    assert record["status"] == "failed"
    assert_runs_once(lab, "fog2")
    assert latest(cli)["status"] == "failed"
    assert_stream_flows(lab, cli)


def test_orchestrator_killed_mid_migration_then_reconciled(lab, cli, stream):
    proc = orchestrator(lab, "migrate", VM, "--to", "fog3", "--bandwidth", SLOW, "--json")
    wait_until_moving(cli)
    proc.kill()
    proc.communicate()
    orphan = latest(cli)
    assert orphan["status"] == "running"
    report = cli("reconcile", "--json")
    assert report.status == ExitStatus.SUCCESS, report.err
    closed = {c[0]: c for c in report.json()["closed_records"]}
    assert orphan["id"] in closed
    assert_runs_once(lab)
    repaired = latest(cli)
    assert repaired["status"] in ("failed", "completed")
    assert "orchestrator died" in repaired["error"]
    assert cli("reconcile", "--json").json()["closed_records"] == []  # idempotent
    assert_stream_flows(lab, cli)


def test_a_dirty_rate_that_never_converges_is_aborted_by_policy(lab, cli, stream):
    running, _ = world(lab)
    agent = lab.agent(VM, timeout_s=3.0)
    agent.set_dirtier(pages_per_s=300000, working_set_mib=12)
    target = "fog2" if running != ["fog2"] else "fog3"
    try:
        result = cli("migrate", VM, "--to", target, "--bandwidth", "20", "--json")
    finally:
        agent.set_dirtier(pages_per_s=0, working_set_mib=0)
    assert result.status == ExitStatus.ERROR
    record = result.json()
    assert record["status"] == "aborted" and record["policy"] == "abort"
    assert "has not shrunk" in record["stalled"]
    assert latest(cli)["result"]["stalled"] == record["stalled"]
    assert_runs_once(lab, running[0])
    assert_stream_flows(lab, cli)


def test_a_vanished_fog_node(lab, cli, stream):
    running, _ = world(lab)
    gone = next(n for n in ("fog1", "fog2", "fog3") if n not in running)
    subprocess.run(["ip", "link", "set", f"{PREFIX}-{gone}c", "down"], check=True)
    try:
        listing = cli("vm", "list", "--json")
        assert listing.status == ExitStatus.SUCCESS
        assert f"fog node {gone} unreachable" in listing.err
        assert [r["node"] for r in listing.json()] == running
        result = cli("migrate", VM, "--to", gone)
        assert result.status == ExitStatus.ERROR and "cannot connect" in result.err
    finally:
        subprocess.run(["ip", "link", "set", f"{PREFIX}-{gone}c", "up"], check=True)
    assert_runs_once(lab, running[0])
    assert_stream_flows(lab, cli)


def test_every_record_was_accepted_exactly_once_through_the_faults(lab, cli, stream):
    stream["proc"].terminate()  # stop producing, drain what is unacknowledged, report
    assert stream["proc"].wait(timeout=90) == 0
    report = json.loads(stream["report"].read_text())["devices"]
    got = accepted(lab, cli)
    for dev in DEVICES:
        sent = report[dev]
        assert sent["sent"] > 100 and sent["acked"] == sent["sent"], (dev, sent)
        assert got[dev]["accepted"] == sent["sent"], (dev, got[dev], sent)
        assert got[dev]["next"] == sent["sent"] + 1  # each sequence number once, none missing
        assert got[dev]["chain"] == sent["chain"]  # the very records sent, in order
    print("exactly once through the faults:", {d: {k: report[d][k] for k in (
        "sent", "connects", "resent")} | {"duplicates": got[d]["duplicates"]} for d in DEVICES})


def test_lab_down_during_a_migration_leaves_nothing(lab, cli):
    running, _ = world(lab)
    target = "fog2" if running != ["fog2"] else "fog3"
    proc = orchestrator(lab, "migrate", VM, "--to", target, "--bandwidth", SLOW, "--json")
    wait_until_moving(cli)
    assert cli("lab", "down").status == ExitStatus.SUCCESS
    finish(proc)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{PREFIX}-" not in links and f"{PREFIX}-" not in netns
    assert not [p for p in psutil.process_iter(["cmdline"])
                if f"guest={VM}" in " ".join(p.info["cmdline"] or [])]
    assert str(lab.state_dir) not in Path("/proc/mounts").read_text()


def test_lab_up_again_after_lab_down_frees_the_names_of_the_vms_that_died(lab, cli):
    """`lab down` takes the VMs with it while the records stay; after `lab up` nothing lists
    them, and creating one of the same name must work instead of 'already exists'."""
    cli("lab", "down")  # as the previous case leaves it (idempotent if it already ran)
    up = cli("lab", "up", "--nodes", "3", "--subnet", SUBNET, "--node-memory", "400")
    assert up.status == ExitStatus.SUCCESS, up.err
    assert cli("vm", "list", "--json").json() == []
    created = cli("vm", "create", VM, "--node", "fog2", "--memory", "128")
    assert created.status == ExitStatus.SUCCESS, created.err
    try:
        assert_runs_once(lab, "fog2")
        assert [r["name"] for r in cli("vm", "list", "--json").json()] == [VM]
    finally:
        cli("vm", "destroy", VM)
