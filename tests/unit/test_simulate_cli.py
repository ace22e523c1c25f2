"""`orchestrator simulate` in-process: files written, JSON printed, bad input exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.errors import ExitStatus

SMALL = ["--users", "300", "--bs", "400", "--chunk-users", "200", "--seed", "3"]


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["simulate", *args, "--json"]) == ExitStatus.SUCCESS
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_fig6a_writes_csv_json_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "fig6a", *SMALL, "--out", str(tmp_path), "--memory-mb", "256,1024",
                   "--r-data-mbps", "0.1,1")
    rows = out["rows"]
    assert isinstance(rows, list) and len(rows) == 2 * 2 * 4
    assert {r["policy"] for r in rows} == {"static", "dynamic", "oracle", "replicas"}
    for name in ("fig6a.csv", "fig6a.json", "fig6a.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "fig6a.png").read_bytes()[:4] == b"\x89PNG"
    assert out["users"] == 300


def test_fig6b_and_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "fig6b", *SMALL, "--out", str(tmp_path))
    assert set(out["at_4_locations_pct"]) == {"90%", "95%", "99%"}  # type: ignore[arg-type]
    assert (tmp_path / "fig6b.png").exists()
    out = run_json(capsys, "run", *SMALL, "--out", str(tmp_path), "--r-data-mbps", "2")
    assert [r["policy"] for r in out["rows"]] == list(  # type: ignore[union-attr]
        ("static", "dynamic", "oracle", "replicas", "energy"))
    assert 0 <= out["dwell_accuracy"]["decision_agreement"] <= 1  # type: ignore[index]
    for name in ("run.csv", "run.json", "run.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"
    assert set(out["files"]) == {"csv", "png", "json"}  # type: ignore[arg-type]


def test_tmig_model_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--footprint-share 1 makes every page carry data: Tmig grows with M (paper's M/r_mig)."""
    args = ["run", *SMALL, "--out", str(tmp_path), "--policies", "static"]
    calibrated = run_json(capsys, *args)["t_mig_s"]
    full = run_json(capsys, *args, "--footprint-share", "1")
    assert full["t_mig_s"] > 2 * calibrated  # type: ignore[operator]
    assert full["t_mig_model"]["footprint_share"] == 1  # type: ignore[index]
    assert main(["simulate", "run", *SMALL, "--out", str(tmp_path), "--calibration",
                 str(tmp_path / "none.json")]) == ExitStatus.BAD_INPUT
    assert "calibration file not found" in capsys.readouterr().err


def test_sweeps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "sweep", "replicas", *SMALL, "--out", str(tmp_path), "--k", "0,2")
    assert len(out["rows"]) == 4  # type: ignore[arg-type]
    out = run_json(capsys, "sweep", "epsilon", *SMALL, "--out", str(tmp_path),
                   "--epsilons-kb", "0,1000")
    assert len(out["rows"]) == 6  # type: ignore[arg-type]
    assert (tmp_path / "sweep-epsilon.png").exists()
    out = run_json(capsys, "sweep", "energy", *SMALL, "--out", str(tmp_path),
                   "--migration-j", "0,2000", "--r-data-mbps", "2")
    rows = out["rows"]
    assert isinstance(rows, list) and len(rows) == 4 * 2
    by = {(r["policy"], r["migration_j"]): r for r in rows}
    # the energy-aware rule migrates less when a migration costs more energy
    assert by[("energy", 2000.0)]["migrations"] <= by[("energy", 0.0)]["migrations"]
    assert by[("dynamic", 2000.0)]["migrations"] == by[("dynamic", 0.0)]["migrations"]
    for name in ("sweep-energy.csv", "sweep-energy.json", "sweep-energy.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_trace_generate_import_and_simulate(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    csv, layout = tmp_path / "t.csv", tmp_path / "layout.csv"
    out = run_json(capsys, "trace", "generate", "--users", "40", "--bs", "200", "--out",
                   str(csv), "--layout-out", str(layout))
    assert out["rows"] == 40 * 1440
    out = run_json(capsys, "trace", "import", str(csv), "--layout", str(layout))
    assert out["valid"] is True and out["users"] == 40
    out = run_json(capsys, "run", "--trace", str(csv), "--layout", str(layout), "--out",
                   str(tmp_path))
    assert out["users"] == 40 and out["personal_history"] is False


def test_table_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "fig6b", *SMALL, "--out", str(tmp_path)]) == ExitStatus.SUCCESS
    assert "Fig. 6b" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("user,minute,bs_id\n0,0,1\n0,2,1\n")
    assert main(["simulate", "trace", "import", str(bad), "--bs", "10"]) == ExitStatus.BAD_INPUT
    err = capsys.readouterr().err
    assert "line 3" in err and "gap" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert main(["simulate", "run", *SMALL, "--out", str(tmp_path), "--trace",
                 str(bad)]) == ExitStatus.BAD_INPUT
    assert main(["simulate", "fig6a", *SMALL, "--policies", "teleport",
                 "--out", str(tmp_path)]) == ExitStatus.BAD_INPUT
    assert "unknown policy teleport" in capsys.readouterr().err
    assert main(["simulate", "fig6a", "--memory-mb", "x"]) == ExitStatus.BAD_INPUT
    assert main(["simulate", "trace", "import", str(tmp_path / "missing.csv")]
                ) == ExitStatus.BAD_INPUT
    assert main(["simulate", "run", "--bs", "5", "--fog-nodes", "9", "--out", str(tmp_path)]
                ) == ExitStatus.BAD_INPUT
