"""The calibration campaign without a lab: grids, record conversion, report, bad input."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from orchestrator import calibration_store, calreport
from orchestrator.cli import main
from orchestrator.edge.calibrate import (
    CalibrationRunner,
    GridPoint,
    PointResult,
    campaign_measurements,
    fits_guest,
    footprint_bytes,
    grid,
    latest_campaign,
    log_campaign,
    measured_from_record,
)
from orchestrator.errors import ExitStatus, UserError
from orchestrator.fog.migration import MigrationRequest
from orchestrator.model.precopy import MIB, Calibration, predict
from orchestrator.store import open_store

# --------------------------------------------------------------------------- grids


def test_quick_grid_is_twenty_points_on_small_guests_grouped_by_memory():
    points = grid("quick")
    assert len(points) == 20
    assert {p.memory_mib for p in points} == {128, 256}
    sizes = [p.memory_mib for p in points]
    assert sizes == sorted(sizes)  # one VM per size: a size's points are contiguous
    assert {p.downtime_ms for p in points} >= {50, 100, 300}
    assert min(p.bandwidth_mib_s for p in points) == 5
    assert max(p.bandwidth_mib_s for p in points) == 100


def test_quick_grid_has_both_outcomes_by_the_default_model():
    verdicts = [predict(p.inputs()).converges for p in grid("quick")]
    assert verdicts.count(False) >= 3 and verdicts.count(True) >= 12
    idle = [p for p in grid("quick") if p.dirty_pages_s == 0]
    beyond = [p for p in grid("quick") if p.dirty_mib_s > p.bandwidth_mib_s]
    assert idle and beyond


def test_quick_working_sets_fit_their_guests():
    # a 128 MiB guest leaves ~20 MiB available and the agent keeps 16 MiB in reserve
    for kind in ("quick", "small", "full"):
        assert all(p.working_set_mib <= 4 for p in grid(kind) if p.memory_mib == 128)


def test_full_grid_spans_the_issue_ranges():
    points = grid("full")
    assert {p.memory_mib for p in points} == {128, 256, 512, 1024}
    assert {p.bandwidth_mib_s for p in points} >= {5, 100}
    assert len({p.downtime_ms for p in points}) >= 2
    assert any(p.dirty_mib_s > p.bandwidth_mib_s for p in points)
    assert len({p.working_set_mib for p in points if p.memory_mib == 1024}) >= 3


def test_grid_subsets():
    assert {p.memory_mib for p in grid("full", [512])} == {512}
    assert len(grid("quick", [128], max_points=3)) == 3
    with pytest.raises(UserError, match="no memory size 768"):
        grid("quick", [768])
    with pytest.raises(UserError, match="unknown grid"):
        grid("huge")


@pytest.mark.parametrize("args, message", [
    ((0, 0, 0, 20, 300), "memory must be > 0"),
    ((128, -1, 8, 20, 300), "dirty rate must be >= 0"),
    ((128, 100, -8, 20, 300), "working set must be >= 0"),
    ((128, 0, 0, 0, 300), "bandwidth must be > 0"),
    ((128, 0, 0, -5, 300), "bandwidth must be > 0"),
    ((128, 0, 0, 20, 0), "downtime limit must be > 0"),
    ((128, 100, 0, 20, 300), "needs a working set"),
    ((128, 100, 128, 20, 300), "must be below memory"),
])
def test_grid_point_rejects_bad_values(args, message):
    with pytest.raises(UserError, match=message):
        GridPoint(*args)


def test_working_set_must_leave_the_agents_reserve():
    assert fits_guest(GridPoint(128, 1000, 12, 20, 300), available_mib=32)
    assert not fits_guest(GridPoint(128, 1000, 20, 20, 300), available_mib=32)


# --------------------------------------------------------------------------- records


def sample(t: float, iteration: int, remaining: int, normal: int, bps: int = 20 * MIB,
           dirty: int = 0) -> dict[str, Any]:
    return {"t_s": t, "iteration": iteration, "remaining_bytes": remaining,
            "processed_bytes": normal * 4096, "normal_pages": normal,
            "bandwidth_bps": bps, "dirty_rate_pages_s": dirty}


def record(status: str = "completed", stalled: str | None = None,
           samples: list[dict[str, Any]] | None = None, **final: Any) -> dict[str, Any]:
    figures = {"total_time_ms": 5000, "downtime_ms": 80, "iterations": 5,
               "transferred_bytes": 100 * MIB, "normal_bytes": 95 * MIB, **final}
    return {
        "id": 7, "status": status,
        "params": {"memory_bytes": 128 * MIB, "bandwidth_mib_s": 20, "downtime_ms": 100,
                   "dirty_rate_pages_s": 2000, "working_set_bytes": 8 * MIB},
        "result": {"stalled": stalled, "final": figures if status == "completed" else {}},
        "samples": samples if samples is not None else [
            sample(0.2, 0, 0, 0, bps=0), sample(1.0, 1, 60 * MIB, 10_000),
            sample(4.0, 1, 2 * MIB, 21_000, bps=19 * MIB),
            sample(4.4, 2, 6 * MIB, 22_000, bps=20 * MIB, dirty=1800),
            sample(4.8, 3, 2 * MIB, 23_000, bps=21 * MIB, dirty=2200)],
    }


def test_completed_record_becomes_a_measured_migration():
    m = measured_from_record(record())
    assert m is not None and m.converged and m.label == "#7"
    assert m.memory_bytes == 128 * MIB
    assert m.bandwidth_bytes_s == 20 * MIB  # median memory_bps, zero samples skipped
    assert m.dirty_rate_pages_s == 2000  # the dirtier's rate: QEMU's median (2000) not higher
    assert m.working_set_bytes == 8 * MIB
    assert m.downtime_limit_s == 0.1
    assert (m.total_time_s, m.downtime_s, m.iterations) == (5.0, 0.08, 5)
    assert m.transferred_bytes == 100 * MIB
    # round 0: 21 000 normal pages + 2 MiB left to visit, below the final normal bytes
    assert m.footprint_bytes == 21_000 * 4096 + 2 * MIB


def test_footprint_falls_back_to_normal_bytes_and_is_capped_by_memory():
    assert footprint_bytes({"normal_bytes": 90 * MIB}, [], 128 * MIB) == 90 * MIB
    assert footprint_bytes({"normal_bytes": 200 * MIB}, [], 128 * MIB) == 128 * MIB
    assert footprint_bytes({}, [], 128 * MIB) is None
    idle = [sample(1.0, 1, 40 * MIB, 20_000)]  # the round-0 bound is above the final count
    assert footprint_bytes({"normal_bytes": 85 * MIB}, idle, 128 * MIB) == 85 * MIB


def test_qemus_dirty_rate_counts_only_when_higher_than_the_guests():
    rec = record()
    rec["params"]["dirty_rate_pages_s"] = 8000  # QEMU sees W/period on a small set
    assert measured_from_record(rec).dirty_rate_pages_s == 8000
    rec["params"]["dirty_rate_pages_s"] = 0  # idle guest: its background counts
    assert measured_from_record(rec).dirty_rate_pages_s == 2000


def test_without_measured_rates_the_request_stands_in():
    m = measured_from_record(record(samples=[]))
    assert m is not None
    assert m.bandwidth_bytes_s == 20 * MIB  # the cap
    assert m.dirty_rate_pages_s == 2000  # what the guest was asked to dirty


def test_stalled_abort_is_a_non_converged_measurement():
    m = measured_from_record(record("aborted", stalled="remaining data has not shrunk"))
    assert m is not None and not m.converged and m.footprint_bytes is None


@pytest.mark.parametrize("rec", [
    record("failed"),
    record("aborted"),  # aborted by a timeout, not a stall: says nothing about the model
    record(total_time_ms=None),
    {**record(), "params": {"memory_bytes": 0}},
])
def test_unusable_records_are_skipped(rec):
    assert measured_from_record(rec) is None


# --------------------------------------------------------------------------- campaign + report


def test_campaign_event_and_report_from_the_store(tmp_path: Path):
    store = open_store(tmp_path)
    try:
        ids = []
        for i in range(6):
            rid = store.start_migration("cal-m128", "fog1", "fog2", record()["params"], None, 1)
            rec = record(total_time_ms=4000 + 200 * i)
            store.finish_migration(rid, "completed", rec["result"], rec["samples"])
            ids.append(rid)
        point = GridPoint(128, 2000, 8, 20, 100)
        log_campaign(store, "quick", [PointResult(point, i, "completed") for i in ids], 3)
        campaign = latest_campaign(store)["data"]
        assert campaign["record_ids"] == ids and campaign["every"] == 3
        measured = campaign_measurements(store, campaign["record_ids"])
    finally:
        store.close()
    assert len(measured) == 6
    summary = calreport.summary(measured, Calibration(), every=3)
    assert summary["held_out"] == 2 and summary["train"] == 4
    stats = summary["held_out_accuracy"]["total_time"]
    assert stats["n"] == 2 and math.isfinite(stats["mape"])
    plots = calreport.write_plots(summary["rows"], tmp_path / "plots")
    assert [p.name for p in plots] == ["total_time.png", "transferred_bytes.png",
                                       "downtime.png"]
    assert all(p.stat().st_size > 1000 for p in plots)


# --------------------------------------------------------------------------- CLI bad input


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGEIOT_STATE_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (["calibrate", "--memory", "0"], "--memory must be > 0 MiB"),
    (["calibrate", "--quick", "--memory", "-128"], "--memory must be > 0 MiB"),
    (["calibrate", "--point", "0,0,0,20,300"], "memory must be > 0 MiB"),
    (["calibrate", "--point", "128,-100,8,20,300"], "dirty rate must be >= 0"),
    (["calibrate", "--point", "128,0,0,-20,300"], "bandwidth must be > 0"),
    (["calibrate", "--point", "128,0,0,20"], "--point wants"),
    (["calibrate", "--point", "128,x,0,20,300"], "must be integers"),
    (["calibrate", "--quick", "--every", "1"], "--every must be >= 2"),
    (["calibrate", "--quick", "--nodes", "fog1"], "--nodes wants two"),
    (["calibrate", "import", "/nonexistent/cal.json"], "calibration file not found"),
    (["calibrate", "report", "--calibration", "/nonexistent/cal.json"],
     "calibration file not found"),
    (["calibrate", "report"], "no calibration campaign"),
    (["calibrate", "export", "out.json"], "no calibration to export"),
])
def test_bad_input_is_one_line_exit_2(state, capsys, args, message):
    assert main(args) == ExitStatus.BAD_INPUT
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_malformed_calibration_file_is_refused(state, capsys):
    bad = state / "bad.json"
    bad.write_text('{"schema": "edgeiot.calibration", "version": 1, "parameters": '
                   '{"setup_s": -1}}')
    assert main(["calibrate", "import", str(bad)]) == ExitStatus.BAD_INPUT
    assert "malformed calibration file" in capsys.readouterr().err
    assert not calibration_store.default_path(state).exists()


def test_export_import_round_trip(state, capsys):
    fitted = Calibration(setup_s=0.7, bandwidth_efficiency=0.9, fitted_on=12, source="lab A")
    calibration_store.save(fitted, state)
    out = state / "travel" / "cal.json"
    assert main(["calibrate", "export", str(out)]) == ExitStatus.SUCCESS
    calibration_store.default_path(state).unlink()
    assert main(["calibrate", "import", str(out)]) == ExitStatus.SUCCESS
    assert calibration_store.read(calibration_store.default_path(state)) == fitted
    assert "lab A" in capsys.readouterr().out


class _Fleet:
    def node(self, name: str) -> str:
        return name


class _Session:
    fleet = _Fleet()

    def running_on(self, vm: str) -> list[str]:
        return ["fog1"]


class ScriptedRunner(CalibrationRunner):
    """The runner's own sequencing over scripted point outcomes: no VM, no lab."""

    def __init__(self, statuses: list[str]) -> None:
        self.lines: list[str] = []
        super().__init__(_Session(), None, Path("/nonexistent"),  # type: ignore[arg-type]
                         sleep=lambda _s: None, notify=self.lines.append)
        self.statuses = statuses
        self.migrations: list[MigrationRequest] = []

    @contextmanager
    def _vm(self, memory_mib: int) -> Iterator[tuple[str, Any]]:
        yield f"cal-m{memory_mib}", None

    def _migrate(self, request: MigrationRequest) -> dict[str, Any]:
        self.migrations.append(request)
        return {"id": len(self.migrations), "status": "completed", "error": None}

    def _run_point(self, vm: str, agent: Any, point: GridPoint) -> PointResult:
        status = self.statuses.pop(0)
        return PointResult(point, 100 + len(self.statuses), status, note=f"{status} note")


def test_one_warm_up_migration_before_the_grid_kept_out_of_the_results():
    points = grid("quick", [128], 2) + grid("quick", [256], 1)
    runner = ScriptedRunner(["completed"] * 3)
    results = runner.run(points)
    assert [r.status for r in results] == ["completed"] * 3
    assert len(runner.migrations) == 1  # the warm-up, at the grid's top bandwidth
    assert runner.migrations[0].bandwidth_mib_s == max(p.bandwidth_mib_s for p in points)
    assert runner.migrations[0].destination == "fog2"
    assert runner.warm_up == {"id": 1, "status": "completed", "error": None}
    assert "warm-up migration to fog2: completed" in runner.lines


def test_a_failed_point_is_run_once_more_and_the_second_outcome_kept():
    points = grid("quick", [128], 3)
    runner = ScriptedRunner(["failed", "completed", "aborted", "failed", "failed"])
    results = runner.run(points)
    assert [r.status for r in results] == ["completed", "aborted", "failed"]
    assert results[0].note.startswith("retried after: failed note")
    assert results[1].note == "aborted note"  # aborted by policy: a measurement, not retried
    assert runner.statuses == []


def test_each_round_counts_once_in_qemus_dirty_rate():
    long_round = [sample(1.0 + i / 10, 2, 9 * MIB, 20_000, dirty=1000) for i in range(20)]
    later = [sample(3.5, 3, 5 * MIB, 21_000, dirty=2100), sample(3.8, 4, 5 * MIB, 22_000,
                                                                 dirty=2050)]
    rec = record(samples=long_round + later)
    rec["params"]["dirty_rate_pages_s"] = 1500
    # per-sample median would say 1000 (round 2 sampled 20 times); per round: 2050
    assert measured_from_record(rec).dirty_rate_pages_s == 2050


def test_the_first_sample_of_a_later_round_bounds_round_zeros_data():
    # round 0's last sample still has 98 MiB to go, most of it zero pages; 200 ms later
    # round 1 has begun with 130 MiB of data pages sent in all; the job sent 190 MiB
    dirty = [sample(1.4, 1, 98 * MIB, 28_000), sample(1.6, 2, 30 * MIB, 33_280)]
    assert footprint_bytes({"normal_bytes": 190 * MIB}, dirty, 256 * MIB) == 130 * MIB


# --------------------------------------------------------------------------- workload families


def test_a_hypervisor_measured_rate_is_what_the_fit_sees():
    rec = record()
    rec["params"].update(dirty_rate_pages_s=3072.0, dirty_rate_source="hypervisor page-sampling",
                         dirty_rate_window_s=1.0, workload="uniform")
    rec["result"]["eta"] = {"checkpoints": [{"share": 0.1, "error_pct": 12.0},
                                            {"share": 0.5, "error_pct": None}]}
    m = measured_from_record(rec)
    assert m is not None
    # the measurement, not QEMU's in-migration rate nor the writer's set point
    assert (m.dirty_rate_pages_s, m.dirty_window_s, m.workload) == (3072.0, 1.0, "uniform")
    assert m.inputs().dirty_window_s == 1.0
    assert m.eta_error_pct == (12.0, None)


def test_records_from_before_measurements_keep_the_old_reading():
    m = measured_from_record(record())
    assert m is not None and m.dirty_window_s is None and m.workload == "sweep"


def test_the_quick_grid_gives_every_family_dirtying_points_and_idle_ones_stay_sweeps():
    points = grid("quick")
    by_family: dict[str, int] = {}
    for p in points:
        by_family[p.family] = by_family.get(p.family, 0) + 1
    assert set(by_family) == {"idle", "sweep", "uniform", "zipf", "bursty"}
    assert min(by_family.values()) >= 3
    assert all(p.workload == "sweep" for p in points if p.family == "idle")


def test_the_families_grid_runs_two_families_on_one_small_guest():
    points = grid("families")
    assert {p.memory_mib for p in points} == {128}
    assert {p.family for p in points} == {"idle", "sweep", "uniform"}


def test_an_unknown_workload_is_a_one_line_error():
    with pytest.raises(UserError, match="unknown workload 'spiral'"):
        GridPoint(128, 1000, 4, 20, 300, "spiral")


def test_a_measured_idle_guest_is_idle_whatever_its_background_rate():
    rec = record()
    rec["params"].update(dirty_rate_pages_s=256.0, dirty_rate_source="hypervisor page-sampling",
                         dirty_rate_window_s=1.0)
    rec["params"].pop("workload", None)
    m = measured_from_record(rec)
    assert m is not None and m.workload == "idle" and m.dirty_rate_pages_s == 256.0


def test_libvirts_finish_is_the_wall_end_after_the_last_job_sample():
    rec = record()
    rec["result"]["wall_time_ms"] = 7800  # the last sample above is at 4.8 s
    m = measured_from_record(rec)
    assert m is not None and m.finish_s == pytest.approx(3.0)
