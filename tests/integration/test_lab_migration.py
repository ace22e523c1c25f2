"""Issue 2 end to end on a real 3-node lab: real libvirtds, real QEMU, real migrations.

One lab for the module; one small VM travels fog1 → fog2 → fog3 → fog1 while its agent keeps
counting. Bad input is refused with a one-line error and changes nothing. The last test tears
the lab down and checks that nothing with the lab's prefix survives.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psutil
import pytest

from orchestrator.errors import ExitStatus
from orchestrator.lab.builder import processes_under
from tests.integration.conftest import lab_fixture

pytestmark = pytest.mark.lab

PREFIX, SUBNET = "etest", "10.76.0.0/16"
lab = lab_fixture(PREFIX, SUBNET)
VM = "proxy-t1"


def placement(cli) -> list[str]:
    rows = [r for r in cli("vm", "list", "--json").json() if r["name"] == VM]
    return [r["node"] for r in rows if r["state"] == "running"]


def test_second_lab_up_is_refused(lab, cli):
    state_file = lab.state_dir / "labs" / PREFIX / "lab.json"
    before = state_file.read_text()
    result = cli("lab", "up", "--subnet", SUBNET)
    assert result.status == ExitStatus.BAD_INPUT
    assert "already up" in result.err and len(result.err.strip().splitlines()) == 1
    assert cli("lab", "status", "--json").json()["status"] == "up"
    assert state_file.read_text() == before  # same daemons, same nodes: nothing changed


def test_vm_boots_to_a_ready_agent(lab, cli):
    result = cli("vm", "create", VM, "--node", "fog1", "--memory", "128", "--json")
    assert result.status == ExitStatus.SUCCESS, result.err
    assert result.json()["address"] == "10.76.1.1"
    assert placement(cli) == ["fog1"]
    assert lab.agent(VM).status()["counter"] > 0


@pytest.mark.parametrize("args, message", [
    (["migrate", "nosuchvm", "--to", "fog2"], "unknown VM"),
    (["migrate", VM, "--to", "fog9"], "unknown fog node"),
    (["migrate", VM, "--to", "fog1"], "already runs on fog1"),
    (["migrate", "Bad_Name", "--to", "fog2"], "invalid VM name"),
    (["migrate", VM, "--to", "fog2", "--bandwidth", "0"], "--bandwidth must be > 0"),
    (["migrate", VM, "--to", "fog2", "--bandwidth", "-5"], "--bandwidth must be > 0"),
    (["vm", "create", "x" * 64, "--node", "fog1"], "invalid VM name"),
    (["vm", "create", "other", "--node", "fog7"], "unknown fog node"),
    (["vm", "create", VM, "--node", "fog2"], "already exists"),
    (["vm", "destroy", "nosuchvm"], "unknown VM"),
])
def test_bad_input_is_refused_and_changes_nothing(lab, cli, args, message):
    before = cli("migrations", "--json").json()
    result = cli(*args)
    assert result.status == ExitStatus.BAD_INPUT, result.err
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert placement(cli) == ["fog1"]
    assert cli("migrations", "--json").json() == before


@pytest.mark.parametrize("destination, bandwidth", [("fog2", "40"), ("fog3", "60"),
                                                      ("fog1", "40")])
def test_vm_migrates_and_keeps_running(lab, cli, destination, bandwidth):
    guest = lab.agent(VM)
    before = guest.status()
    result = cli("migrate", VM, "--to", destination, "--bandwidth", bandwidth, "--json")
    assert result.status == ExitStatus.SUCCESS, result.err
    record = result.json()
    assert record["status"] == "completed" and record["destination"] == destination
    assert placement(cli) == [destination]  # runs exactly once, where we sent it
    after = guest.status()
    assert after["boot_id"] == before["boot_id"]  # the same guest, not a reboot
    assert after["counter"] > before["counter"]
    assert record["total_time_ms"] > 0 and record["transferred_bytes"] > 10 * 2**20
    assert record["iterations"] >= 1 and record["downtime_ms"] is not None
    assert record["memory_bytes"] == 128 * 2**20
    assert len(record["samples"]) >= 3
    assert {"t_s", "iteration", "dirty_rate_pages_s", "remaining_bytes", "processed_bytes",
            "bandwidth_bps"} <= set(record["samples"][0])


def test_a_dirtying_guest_migrates_with_its_dirty_rate_recorded(lab, cli):
    guest = lab.agent(VM)
    guest.set_dirtier(pages_per_s=1000, working_set_mib=12)
    try:
        result = cli("migrate", VM, "--to", "fog2", "--bandwidth", "20", "--json")
    finally:
        guest.set_dirtier(pages_per_s=0, working_set_mib=0)
    assert result.status == ExitStatus.SUCCESS, result.err
    record = result.json()
    assert record["dirty_rate_pages_s"] > 0
    assert record["prediction_error_pct"] is None or record["prediction_error_pct"] < 100


def test_records_hold_every_migration_with_samples_and_final_stats(lab, cli):
    records = cli("migrations", "--json", "--samples").json()
    assert [r["destination"] for r in reversed(records)] == ["fog2", "fog3", "fog1", "fog2"]
    for record in records:
        assert record["status"] == "completed"
        assert record["samples"] and record["result"]["final"]["total_time_ms"] > 0
        assert record["prediction"] is not None  # every capped migration was predicted first
    table = cli("migrations")
    assert table.status == ExitStatus.SUCCESS
    assert all(f"│ {r['id']} " in table.out for r in records)


def test_vm_destroy(lab, cli):
    assert cli("vm", "destroy", VM).status == ExitStatus.SUCCESS
    assert placement(cli) == []
    assert cli("vm", "destroy", VM).status == ExitStatus.BAD_INPUT


def test_lab_down_leaves_nothing_behind(lab, cli):
    state = json.loads((lab.state_dir / "labs" / PREFIX / "lab.json").read_text())
    pids = [n[k] for n in state["nodes"] for k in ("libvirtd_pid", "virtlogd_pid")]
    assert cli("lab", "down").status == ExitStatus.SUCCESS
    assert cli("lab", "down").status == ExitStatus.SUCCESS  # idempotent
    assert not [p for p in pids if psutil.pid_exists(p)]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"{PREFIX}-" not in netns and f"{PREFIX}-" not in links
    mounts = Path("/proc/mounts").read_text()
    assert f"/netns/{PREFIX}-" not in mounts and str(lab.state_dir) not in mounts
    qemus = [p for p in psutil.process_iter(["cmdline"])
             if f"guest={VM}" in " ".join(p.info["cmdline"] or [])]
    assert qemus == []
    assert processes_under(lab.state_dir / "labs" / PREFIX) == []
    assert cli("lab", "status", "--json").json()["status"] == "down"
