"""A quick real calibration with two workload families on a 2-node lab: the dirtier's sweep
and the guest's uniform random writer, each migration's r_dir measured by the hypervisor
beforehand, its live ETA kept at 10/25/50/75 %, then the report (leave-one-workload-out
beside the in-distribution figures, with plots), the calibration stamped with the QEMU it
was fitted on, refused for another QEMU without --force, and travelling out and back in.

One lab for the module; the families grid (8 migrations of one 128 MiB guest, two of them
dirtying beyond what converges so the stall policy aborts them) runs once, in the first
test, and must stay within the quick tier's 10 minutes.
"""

from __future__ import annotations

import io
import json
import math
import time
from contextlib import redirect_stdout

import pytest

from orchestrator.calibration_store import local_qemu_version
from orchestrator.cli import main
from orchestrator.errors import ExitStatus
from tests.integration.conftest import lab_fixture

pytestmark = pytest.mark.lab

lab = lab_fixture("ecal", "10.69.0.0/16", nodes=2)
QUICK_BUDGET_S = 600.0


@pytest.fixture(scope="module")
def campaign(lab):
    """Runs `orchestrator calibrate --grid families --json` once for the module."""
    out = io.StringIO()
    started = time.monotonic()
    with redirect_stdout(out):
        status = main(["calibrate", "--grid", "families", "--json"])
    assert status == ExitStatus.SUCCESS, lab.daemon_log_tails()
    summary = json.loads(out.getvalue())
    summary["wall_s"] = time.monotonic() - started
    return summary


def test_campaign_writes_a_calibration_stamped_with_its_qemu_and_families(lab, campaign):
    path = lab.state_dir / "calibration.json"
    assert campaign["calibration_file"] == str(path) and path.exists()
    saved = json.loads(path.read_text())["parameters"]
    assert saved["fitted_on"] == campaign["train"] > 0
    assert saved["qemu_version"] == local_qemu_version()
    assert saved["workloads"] == "sweep,uniform"
    statuses = [p["status"] for p in campaign["points"]]
    assert statuses.count("completed") >= 5
    assert all(p["status"] == "aborted" for p in campaign["points"] if p["stalled"])
    assert campaign["wall_s"] < QUICK_BUDGET_S


def test_every_migration_measured_r_dir_on_the_hypervisor_and_kept_its_eta(lab, cli, campaign):
    records = {r["id"]: r for r in cli("migrations", "--json").json()}
    for point in campaign["points"]:
        if point["record_id"] is None:
            continue
        record = records[point["record_id"]]
        assert record["vm"] == "cal-m128" and record["prediction"] is not None
        params = record["params"]
        assert params["dirty_rate_source"] == "hypervisor page-sampling", params
        assert params["qemu_version"] == local_qemu_version()
        if point["point"]["dirty_pages_s"]:
            assert params["workload"] == point["point"]["workload"]
        eta = (record["result"] or {}).get("eta")
        if record["status"] == "completed":
            assert eta is not None and eta["never_backwards"]
            assert [c["share"] for c in eta["checkpoints"]] == [0.1, 0.25, 0.5, 0.75]
    assert cli("vm", "list", "--json").json() == []  # the campaign's VM is gone


def test_report_gives_lowo_beside_in_distribution_and_plots(lab, cli, campaign, tmp_path):
    result = cli("calibrate", "report", "--out", str(tmp_path), "--json")
    assert result.status == ExitStatus.SUCCESS, result.err
    report = result.json()
    held = report["held_out_accuracy"]
    assert held["total_time"]["n"] >= 1 and math.isfinite(held["total_time"]["mape"])
    assert report["families"] == ["idle", "sweep", "uniform"]
    lowo = report["leave_one_workload_out"]
    assert lowo["pooled"]["total_time"]["n"] >= 2
    assert math.isfinite(lowo["pooled"]["total_time"]["mape_pct"])
    assert set(lowo["by_family"]) <= {"sweep", "uniform"} and lowo["by_family"]
    assert any(e["n"] for e in report["eta"])
    for name in ("total_time.png", "transferred_bytes.png", "downtime.png",
                 "lowo_total_time.png"):
        assert (tmp_path / name).stat().st_size > 1000
    table = cli("calibrate", "report", "--out", str(tmp_path))
    assert table.status == ExitStatus.SUCCESS and "leave-one-workload-out" in table.out


def test_a_calibration_from_another_qemu_needs_force(lab, cli, campaign):
    args = ("predict", "--memory", "128", "--dirty-rate", "0", "--bandwidth", "40")
    refused = cli(*args, "--qemu", "10.0.2")
    assert refused.status == ExitStatus.BAD_INPUT
    assert len(refused.err.strip().splitlines()) == 1 and "QEMU" in refused.err
    assert cli(*args, "--qemu", "10.0.2", "--force").status == ExitStatus.SUCCESS
    assert cli(*args).status == ExitStatus.SUCCESS  # this machine's QEMU: the fitted one


def test_export_import_round_trip(lab, cli, campaign, tmp_path):
    active = lab.state_dir / "calibration.json"
    before = json.loads(active.read_text())
    exported = tmp_path / "lab-cal.json"
    assert cli("calibrate", "export", str(exported)).status == ExitStatus.SUCCESS
    assert json.loads(exported.read_text()) == before
    active.unlink()
    assert cli("calibrate", "import", str(exported)).status == ExitStatus.SUCCESS
    assert json.loads(active.read_text()) == before
    predicted = cli("predict", "--memory", "128", "--dirty-rate", "0", "--bandwidth", "40",
                    "--json").json()
    assert predicted["calibration"]["fitted_on"] == before["parameters"]["fitted_on"]


def test_vm_workload_starts_and_stops_a_family(lab, cli, campaign):
    assert cli("vm", "create", "ecal-w", "--node", "fog1", "--memory", "128").status == 0
    try:
        started = cli("vm", "workload", "ecal-w", "--kind", "zipf", "--rate", "2000",
                      "--working-set", "8", "--json")
        assert started.status == ExitStatus.SUCCESS, started.err
        assert started.json()["kind"] == "zipf"
        assert started.json()["working_set_bytes"] == 8 * 2**20
        stopped = cli("vm", "workload", "ecal-w", "--kind", "none", "--json")
        assert stopped.json() == {**stopped.json(), "kind": "none", "working_set_bytes": 0}
        unknown = cli("vm", "workload", "nosuchvm", "--kind", "uniform")
        assert unknown.status != ExitStatus.SUCCESS
        assert len(unknown.err.strip().splitlines()) == 1
    finally:
        cli("vm", "destroy", "ecal-w")
