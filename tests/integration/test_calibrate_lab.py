"""Issue 4 on a real 2-node lab: a quick calibration on a small grid, its report, and the
calibration file travelling out and back in.

One lab for the module; the small grid (~7 migrations of one 128 MiB guest, one of them
dirtying beyond the bandwidth so the stall policy aborts it) runs once, in the first test.
"""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stdout

import pytest

from orchestrator.cli import main
from orchestrator.errors import ExitStatus
from tests.integration.conftest import lab_fixture

pytestmark = pytest.mark.lab

lab = lab_fixture("ecal", "10.69.0.0/16", nodes=2)


@pytest.fixture(scope="module")
def campaign(lab):
    """Runs `orchestrator calibrate --grid small --json` once for the module."""
    out = io.StringIO()
    with redirect_stdout(out):
        status = main(["calibrate", "--grid", "small", "--json"])
    assert status == ExitStatus.SUCCESS, lab.daemon_log_tails()
    return json.loads(out.getvalue())


def test_campaign_writes_a_fitted_calibration(lab, campaign):
    path = lab.state_dir / "calibration.json"
    assert campaign["calibration_file"] == str(path) and path.exists()
    saved = json.loads(path.read_text())
    assert saved["schema"] == "edgeiot.calibration"
    assert saved["parameters"]["fitted_on"] == campaign["train"] > 0
    statuses = [p["status"] for p in campaign["points"]]
    assert statuses.count("completed") >= 5
    stalled = [p for p in campaign["points"] if p["stalled"]]
    assert all(p["status"] == "aborted" for p in stalled)
    assert campaign["migrations"] >= 6
    warm_up = campaign["warm_up"]
    assert warm_up["id"] not in [p["record_id"] for p in campaign["points"]]


def test_every_migration_is_a_normal_record(lab, cli, campaign):
    records = {r["id"]: r for r in cli("migrations", "--json").json()}
    for point in campaign["points"]:
        if point["record_id"] is not None:
            record = records[point["record_id"]]
            assert record["vm"] == "cal-m128" and record["prediction"] is not None
    assert cli("vm", "list", "--json").json() == []  # the campaign's VM is gone


def test_report_gives_finite_held_out_errors_and_plots(lab, cli, campaign, tmp_path):
    result = cli("calibrate", "report", "--out", str(tmp_path), "--json")
    assert result.status == ExitStatus.SUCCESS, result.err
    report = result.json()
    held = report["held_out_accuracy"]
    assert report["held_out"] >= 2
    for quantity in ("total_time", "transferred_bytes", "downtime", "baseline_total_time"):
        if held[quantity]["n"]:
            assert math.isfinite(held[quantity]["mape"]), quantity
            assert math.isfinite(held[quantity]["p90_ape"]), quantity
    assert held["total_time"]["n"] >= 1
    assert held["total_time"]["mape"] < held["baseline_total_time"]["mape"]
    for name in ("total_time.png", "transferred_bytes.png", "downtime.png"):
        assert (tmp_path / name).stat().st_size > 1000
    table = cli("calibrate", "report", "--out", str(tmp_path))
    assert table.status == ExitStatus.SUCCESS and "MAPE" in table.out


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
