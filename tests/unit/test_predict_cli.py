"""`orchestrator predict` in-process, and the calibration store behind it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator import calibration_store
from orchestrator.cli import main
from orchestrator.errors import ExitStatus, UserError
from orchestrator.model.precopy import MIB, Calibration, MigrationInputs, predict


def run(tmp_path: Path, *args: str) -> ExitStatus:
    return main(["--state-dir", str(tmp_path / "state"), "predict", *args])


def run_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> dict:  # type: ignore[type-arg]
    assert run(tmp_path, *args, "--json") == ExitStatus.SUCCESS
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_table_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = run(tmp_path, "--memory", "1024", "--dirty-rate", "12800", "--bandwidth", "100")
    out = capsys.readouterr().out
    assert status == ExitStatus.SUCCESS
    for text in ("total time", "transferred", "downtime", "stop-and-copy", "naive M ÷ r_mig"):
        assert text in out


def test_json_matches_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(tmp_path, capsys, "--memory", "256", "--dirty-rate", "0",
                    "--bandwidth", "20", "--downtime-ms", "100", "--working-set", "64")
    expected = predict(MigrationInputs(256 * MIB, 0, 20 * MIB, downtime_limit_s=0.1,
                                       working_set_bytes=64 * MIB))
    assert data["prediction"]["total_time_s"] == pytest.approx(expected.total_time_s)
    assert data["prediction"]["iterations"] == 3
    assert data["inputs"]["downtime_limit_s"] == pytest.approx(0.1)
    assert data["naive_time_s"] == pytest.approx(12.8)
    assert data["calibration"]["fitted_on"] == 0


def test_json_for_a_migration_that_never_converges(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(tmp_path, capsys, "--memory", "1024", "--dirty-rate", "40000",
                    "--bandwidth", "100")["prediction"]
    assert data["converges"] is False and data["total_time_s"] is None
    assert "will not converge" in data["reason"]


def test_table_says_why_it_never_converges(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(tmp_path, "--memory", "1024", "--dirty-rate", "40000", "--bandwidth", "100")
    out = " ".join(capsys.readouterr().out.split())
    assert "never" in out and "timeout action" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--memory", "0", "--dirty-rate", "1", "--bandwidth", "10"], "--memory must be > 0"),
        (["--memory", "64", "--dirty-rate", "-1", "--bandwidth", "10"],
         "--dirty-rate must be >= 0"),
        (["--memory", "64", "--dirty-rate", "1", "--bandwidth", "0"],
         "--bandwidth must be > 0"),
        (["--memory", "64", "--dirty-rate", "1", "--bandwidth", "-3"],
         "--bandwidth must be > 0"),
        (["--memory", "64", "--dirty-rate", "1", "--bandwidth", "nan"],
         "--bandwidth must be a finite number"),
        (["--memory", "inf", "--dirty-rate", "1", "--bandwidth", "10"],
         "--memory must be a finite number"),
        (["--memory", "64", "--dirty-rate", "1", "--bandwidth", "10", "--downtime-ms", "0"],
         "--downtime-ms must be > 0"),
        (["--memory", "64", "--dirty-rate", "1", "--bandwidth", "10", "--working-set", "128"],
         "--working-set must be > 0 and <= --memory"),
        (["--memory", "64", "--dirty-rate", "1", "--bandwidth", "inf"],
         "bandwidth must be a finite number"),
        (["--memory", "64", "--dirty-rate", "x", "--bandwidth", "10"], "x"),
        (["--memory", "64", "--bandwidth", "10"], "--dirty-rate"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          args: list[str], message: str) -> None:
    assert run(tmp_path, *args) == ExitStatus.BAD_INPUT
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_unknown_calibration_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = run(tmp_path, "--memory", "64", "--dirty-rate", "0", "--bandwidth", "10",
                 "--calibration", str(tmp_path / "missing.json"))
    assert status == ExitStatus.BAD_INPUT
    assert "calibration file not found" in capsys.readouterr().err


def test_malformed_calibration_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "edgeiot.calibration", "version": 1, "parameters": {"x": 1}}')
    status = run(tmp_path, "--memory", "64", "--dirty-rate", "0", "--bandwidth", "10",
                 "--calibration", str(bad))
    err = capsys.readouterr().err
    assert status == ExitStatus.BAD_INPUT
    assert "malformed calibration file" in err and "unknown calibration parameter" in err


def test_explicit_and_active_calibrations_are_used(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    given = calibration_store.write(Calibration(source="lab B", fitted_on=9),
                                    tmp_path / "b.json")
    data = run_json(tmp_path, capsys, "--memory", "64", "--dirty-rate", "0", "--bandwidth",
                    "10", "--calibration", str(given))
    assert data["calibration"] == {"source": "lab B", "fitted_on": 9}
    calibration_store.save(Calibration(source="active"), tmp_path / "state")
    data = run_json(tmp_path, capsys, "--memory", "64", "--dirty-rate", "0", "--bandwidth", "10")
    assert data["calibration"]["source"] == "active"


# --------------------------------------------------------------------------- store


def test_store_defaults_when_nothing_is_active(tmp_path: Path) -> None:
    assert calibration_store.load(tmp_path) == Calibration()
    assert calibration_store.default_path(tmp_path) == tmp_path / "calibration.json"


def test_store_export_and_import(tmp_path: Path) -> None:
    lab_a, lab_b = tmp_path / "a", tmp_path / "b"
    with pytest.raises(UserError, match="no calibration to export"):
        calibration_store.export_to(lab_a, tmp_path / "out.json")
    fitted = Calibration(setup_s=0.9, fitted_on=40, source="lab A")
    calibration_store.save(fitted, lab_a)
    exported = calibration_store.export_to(lab_a, tmp_path / "travel" / "cal.json")
    assert calibration_store.import_from(exported, lab_b) == fitted
    assert calibration_store.load(lab_b) == fitted
    assert not list((tmp_path / "travel").glob(".*"))  # no temporary files left behind


def test_store_refuses_garbage(tmp_path: Path) -> None:
    junk = tmp_path / "junk.json"
    junk.write_bytes(b"\xff\xfe not text")
    with pytest.raises(UserError, match="junk.json"):
        calibration_store.read(junk)
    with pytest.raises(UserError, match="not found"):
        calibration_store.import_from(tmp_path / "nope.json", tmp_path)
