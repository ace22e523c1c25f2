"""The pre-copy model against hand-worked cases, properties, and its live helpers."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from orchestrator.model.live import (
    JobSample,
    detect_stall,
    estimate_remaining,
    monotone_eta,
    monotone_series,
)
from orchestrator.model.precopy import (
    MIB,
    Calibration,
    MigrationInputs,
    leftover_bytes,
    naive_time_s,
    predict,
)

GIB = 1024 * MIB
BW = 100 * MIB  # 100 MiB/s, so ς = 30 MiB at the default 0.3 s limit
HALF_BW_PAGES = 12_800  # 50 MiB/s of 4 KiB pages
TRIPLE_BW_PAGES = 38_400  # 150 MiB/s
IDEAL = Calibration(setup_s=0.0, bandwidth_efficiency=1.0, zero_page_wire_ratio=0.0,
                    downtime_overhead_s=0.0, time_abs_spread_s=0.0, round_overhead_s=0.0,
                    hot_set_bytes=0.0)


def full(dirty_pages_s: float, working_set: int | None = None, **kw: object) -> MigrationInputs:
    """1 GiB guest whose every page is non-zero (the docstring table's cases)."""
    return MigrationInputs(GIB, dirty_pages_s, BW, working_set_bytes=working_set,
                           footprint_bytes=GIB, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- hand-worked


# The module docstring's table, by hand. ς = 30 MiB, a slot χ = 10 MiB, ℓ = min(25, pass − 10);
# each sync finds r·t of the pass before it, and P = ℓ + that must fit ς (QEMU 7.2). E.g. half
# bandwidth: 999 MiB of round 0 take 9.99 s, so the sync finds 499.5 MiB next to the 25 MiB
# tail; the passes halve down to 15.609 (P = 25 + 15.609 = 40.6 > ς), then P = 25 + 7.805 =
# 32.8 > ς keeps only 22.8 and sends one 10 MiB slot (0.1 s) in which 5 MiB get dirty:
# P = 27.8 ≤ ς. Live 19.92390625 s + pause 27.8046875 × 4 ms. Beyond B with W = 16 MiB ≤ ς:
# the pass after round 0 sends the 25 MiB tail and all of W but ℓ = 16 − 10 = 6 MiB (0.35 s)
# while W is rewritten: P = 6 + 16, capped by W = 16.
@pytest.mark.parametrize(
    ("case", "inputs", "rounds_mib", "pause_mib", "downtime", "total", "mib"),
    [
        ("idle", full(0), [999], 25, 0.1, 10.09, 1024),
        ("half bandwidth", full(HALF_BW_PAGES),
         [999, 499.5, 249.75, 124.875, 62.4375, 31.21875, 15.609375, 10], 27.8046875,
         27.8046875 * 0.004, 19.92390625 + 27.8046875 * 0.004, 1992.390625 + 27.8046875),
        ("working set 64 MiB", full(HALF_BW_PAGES, 64 * MIB), [999, 64, 32, 16, 10], 28,
         0.112, 11.21 + 0.112, 1149),
        ("above bandwidth, W <= ς", full(TRIPLE_BW_PAGES, 16 * MIB), [999, 35], 16, 0.064,
         10.34 + 0.064, 1050),
    ],
)
def test_hand_worked_cases(case: str, inputs: MigrationInputs, rounds_mib: list[float],
                           pause_mib: float, downtime: float, total: float,
                           mib: float) -> None:
    p = predict(inputs, IDEAL)
    assert p.converges, case
    assert [r.sent_bytes / MIB for r in p.rounds] == pytest.approx(rounds_mib)
    assert p.stop_copy_bytes / MIB == pytest.approx(pause_mib)
    assert p.stop_copy_bytes <= p.switchover_threshold_bytes  # QEMU switches only below ς
    assert p.downtime_s == pytest.approx(downtime)
    assert p.total_time_s == pytest.approx(total)
    assert p.transferred_bytes / MIB == pytest.approx(mib)
    assert p.iterations == len(rounds_mib) + 2  # libvirt counts setup and final syncs too
    assert p.switchover_threshold_bytes == pytest.approx(30 * MIB)


def test_leftover_follows_the_100_ms_check() -> None:
    assert leftover_bytes(30 * MIB, BW, GIB) == pytest.approx(25 * MIB)  # ς − chunk/2
    assert leftover_bytes(5 * MIB, BW, GIB) == pytest.approx(2.5 * MIB)  # chunk > ς: ς/2
    assert leftover_bytes(30 * MIB, BW, 35 * MIB) == pytest.approx(25 * MIB)
    assert leftover_bytes(30 * MIB, BW, 32 * MIB) == pytest.approx(22 * MIB)  # one slot
    assert leftover_bytes(30 * MIB, BW, 8 * MIB) == 0.0


def test_tiny_working_set_sends_the_tail_then_switches() -> None:
    """W < ς = 5 MiB (50 ms), a slot χ = 10 MiB > ς: round 0 keeps ς/2 = 2.5 MiB; the sync
    finds all of W, P = 6.5 > ς, so one more pass sends it whole (it fits a slot) in
    0.065 s, during which 7.8125 MiB/s dirty 0.5078 MiB: P = 0.5078 ≤ ς."""
    tiny = predict(MigrationInputs(GIB, 2000, BW, downtime_limit_s=0.05,
                                   working_set_bytes=4 * MIB, footprint_bytes=GIB), IDEAL)
    assert [r.sent_bytes / MIB for r in tiny.rounds] == pytest.approx([1021.5, 6.5])
    assert tiny.iterations == 4
    assert tiny.stop_copy_bytes / MIB == pytest.approx(7.8125 * 0.065)
    assert tiny.transferred_bytes / MIB == pytest.approx(1028 + 7.8125 * 0.065)


def test_a_cpu_slower_than_the_cap_paces_the_passes_and_sets_the_threshold() -> None:
    """k = 20 ms/MiB is 50 MiB/s of CPU: under a 100 MiB/s cap the passes go at 50 MiB/s and
    QEMU, which sets ς from the rate its stream achieved, switches at 15 MiB, not 30. The
    migration is the one a 50 MiB/s cap would give, pause included."""
    cpu_bound = replace(IDEAL, stop_copy_s_per_mib=0.02)
    for rate in (0, HALF_BW_PAGES // 2):
        fast_cap = predict(full(rate), cpu_bound, with_uncertainty=False)
        slow_cap = predict(replace(full(rate), bandwidth_bytes_s=BW / 2), cpu_bound,
                           with_uncertainty=False)
        assert fast_cap.effective_bandwidth_bytes_s == pytest.approx(50 * MIB)
        assert fast_cap.switchover_threshold_bytes == pytest.approx(15 * MIB)
        assert fast_cap.total_time_s == pytest.approx(slow_cap.total_time_s)
        assert fast_cap.downtime_s == pytest.approx(slow_cap.downtime_s)
        assert fast_cap.rounds == slow_cap.rounds


def test_dirty_rate_above_bandwidth_never_converges_and_says_what_qemu_does() -> None:
    p = predict(full(TRIPLE_BW_PAGES), IDEAL)
    assert not p.converges
    assert math.isinf(p.total_time_s) and math.isinf(p.transferred_bytes)
    assert "will not converge" in p.reason and "QEMU would keep iterating" in p.reason
    assert "timeout" in p.reason
    # forcing it would pause for all of W, at the uncapped stop-and-copy rate (4 ms/MiB)
    assert p.downtime_s == pytest.approx(1024 * 0.004)
    assert p.iterations == 3  # a lower bound: the first sync already proves it
    data = p.as_dict()
    assert data["total_time_s"] is None and data["converges"] is False
    json.dumps(data)  # JSON-safe


def test_dirty_rate_equal_to_bandwidth_never_converges() -> None:
    assert not predict(full(25_600), IDEAL).converges  # exactly 100 MiB/s


SLOW = 10 * MIB  # 10 MiB/s: a 100 ms slot sends χ = 1 MiB


def _slow(rate_mib_s: float, working_set_mib: int, limit_s: float) -> MigrationInputs:
    return MigrationInputs(128 * MIB, rate_mib_s * MIB / 4096, SLOW, downtime_limit_s=limit_s,
                           working_set_bytes=working_set_mib * MIB, footprint_bytes=64 * MIB)


def test_hot_set_and_sync_cost_stall_a_dirty_rate_well_below_bandwidth() -> None:
    """Issue 4: a 50 ms limit at 10 MiB/s (ς = 0.5 MiB < χ): a pass sends all that is pending,
    and the next sync finds d = H + r·(d/B + c). Its floor is (0.1 + 6 × 0.02) / (1 − 0.6)
    = 0.55 MiB ≥ ς: never, although r is only 60 % of B. Without either cost the floor is
    0.25 or 0.3 MiB and the passes shrink under ς."""
    both = replace(IDEAL, hot_set_bytes=0.1 * MIB, round_overhead_s=0.02)
    stuck = predict(_slow(6, 4, 0.05), both)
    assert not stuck.converges and math.isinf(stuck.total_time_s)
    assert "below effective bandwidth" in stuck.reason and "≥ 0.55 MiB" in stuck.reason
    assert stuck.iterations == 3  # proved at the first sync after round 0
    for one in (replace(both, hot_set_bytes=0.0), replace(both, round_overhead_s=0.0)):
        assert predict(_slow(6, 4, 0.05), one).converges


def test_a_sync_must_find_less_than_one_slot_when_the_threshold_exceeds_it() -> None:
    """ς = 3 MiB > χ = 1 MiB: each pass keeps ≥ ς − χ unsent, so the pending set shrinks only
    if a sync finds less than one slot. At r = 8 MiB/s the floor (0.1 + 0.16) / 0.2 = 1.3 MiB
    is far below ς yet above χ: never (the old floor ≥ ς rule said it converges). At
    7 MiB/s it is (0.1 + 0.14) / 0.3 = 0.8 MiB < χ: the passes creep down and it switches."""
    cal = replace(IDEAL, hot_set_bytes=0.1 * MIB, round_overhead_s=0.02)
    assert not predict(_slow(8, 16, 0.3), cal).converges
    creeps = predict(_slow(7, 16, 0.3), cal)
    assert creeps.converges and creeps.stop_copy_bytes <= 3 * MIB
    assert creeps.iterations > predict(_slow(7, 16, 0.3), IDEAL).iterations


def test_default_calibration_stalls_near_the_bandwidth() -> None:
    """The default hot set and sync cost put the edge below B: 90 % of it never finishes."""
    near = MigrationInputs(256 * MIB, 0.9 * 40 * MIB * 0.95 / 4096, 40 * MIB,
                           working_set_bytes=48 * MIB)
    assert not predict(near).converges
    assert predict(replace(near, dirty_rate_pages_s=near.dirty_rate_pages_s / 3)).converges


def test_round_zero_sends_footprint_not_memory() -> None:
    inputs = MigrationInputs(GIB, 0, BW, footprint_bytes=100 * MIB)
    # 100 MiB of data at 100 MiB/s. A slot's 10 MiB of wire covers 102.4 MiB of pages here
    # (> ς = 30), so round 0 stops with ς/2 = 15 MiB of pages unsent, 100/1024 of them data:
    # 1.46 MiB move from the stream (1/B) to the pause (4 ms/MiB); zero pages cost nothing
    moved = 15 * 100 / 1024
    assert predict(inputs, IDEAL).total_time_s == pytest.approx(1.0 - moved / 100
                                                                + moved * 0.004)
    with_markers = replace(IDEAL, zero_page_wire_ratio=9 / 4096)
    p = predict(inputs, with_markers)
    assert p.transferred_bytes == pytest.approx(100 * MIB + 924 * MIB * 9 / 4096)


def test_zero_page_scanning_hides_under_the_cap() -> None:
    """quick2's misfit: σ = 5.9 s/GiB charged on top of the wire time made idle 256 MiB
    guests at 100 MiB/s 0.6 s too slow. Under a cap QEMU scans zero pages while it would
    otherwise sleep out its slot, so a pass costs max(wire/B, k·wire + σ·zero). Here
    (1 GiB, 100 MiB of data, 100 MiB/s) a MiB of round-0 pages takes 0.977 ms of wire and
    0.391 + 0.441 = 0.832 ms of CPU at σ = 0.5 s/GiB: round 0 is as fast as with σ = 0 and
    only the pause's 15 MiB of pages (ς/2: a slot covers 102.4 MiB > ς) pay σ."""
    inputs = MigrationInputs(GIB, 0, BW, footprint_bytes=100 * MIB)
    free, scanned = (predict(inputs, replace(IDEAL, zero_scan_s_per_gib=sigma))
                     for sigma in (0.0, 0.5))
    assert [r.duration_s for r in scanned.rounds] == [r.duration_s for r in free.rounds]
    assert scanned.rounds[0].duration_s == pytest.approx((1024 - 15) * (100 / 1024) / 100)
    zero_left = 15 * 924 / 1024
    assert scanned.downtime_s - free.downtime_s == pytest.approx(zero_left * 0.5 / 1024)


def test_zero_page_scanning_paces_a_pass_when_the_cpu_is_slower_than_the_cap() -> None:
    """At σ = 4 s/GiB the same guest's round 0 is CPU-bound: a MiB of its pages takes
    0.391 + 3.525 = 3.916 ms of CPU against 0.977 ms of wire. A slot then gets through
    25.5 MiB of pages (< ς = 30), so ℓ = 30 − 12.77 MiB stays for the pause, which costs
    the same CPU per page: Tmig = 1024 MiB × 3.916 ms, however the pages split."""
    scan = replace(IDEAL, zero_scan_s_per_gib=4.0)
    p = predict(MigrationInputs(GIB, 0, BW, footprint_bytes=100 * MIB), scan)
    per_mib = (100 / 1024) * 0.004 + (924 / 1024) * 4 / 1024
    left = 30 - 0.1 / per_mib / 2
    assert p.stop_copy_bytes / MIB == pytest.approx(left)
    assert p.rounds[0].duration_s == pytest.approx((1024 - left) * per_mib)
    assert p.downtime_s == pytest.approx(left * per_mib)
    assert p.total_time_s == pytest.approx(1024 * per_mib)


def test_defaults_reproduce_lab_notes_idle_migration() -> None:
    """LAB-NOTES: 256 MiB idle busybox guest at 20 MiB/s took 4.32 s for 82.9 MB."""
    p = predict(MigrationInputs(256 * MIB, 0, 20 * MIB))
    assert p.total_time_s == pytest.approx(4.32, rel=0.05)
    assert p.transferred_bytes == pytest.approx(82.9e6, rel=0.10)
    assert p.iterations == 3  # as measured
    assert naive_time_s(MigrationInputs(256 * MIB, 0, 20 * MIB)) == pytest.approx(12.8)


def test_uncertainty_grows_unbounded_near_the_convergence_edge() -> None:
    safe = predict(full(HALF_BW_PAGES), IDEAL)
    assert 0 < safe.total_time_uncertainty_s < safe.total_time_s
    edge = predict(full(int(25_600 * 0.97)), IDEAL)  # 3 % under B; ±5 % bandwidth swing
    assert edge.converges and math.isinf(edge.total_time_uncertainty_s)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory_bytes": 0}, "memory must be > 0"),
        ({"dirty_rate_pages_s": -1.0}, "dirty rate must be >= 0"),
        ({"bandwidth_bytes_s": 0.0}, "bandwidth must be > 0"),
        ({"bandwidth_bytes_s": -5.0}, "bandwidth must be > 0"),
        ({"bandwidth_bytes_s": math.nan}, "bandwidth must be a finite number"),
        ({"downtime_limit_s": 0.0}, "downtime limit must be > 0"),
        ({"working_set_bytes": 2 * GIB}, "working set must be between"),
        ({"footprint_bytes": -1}, "footprint must be between"),
        ({"page_size": 0}, "page size must be > 0"),
    ],
)
def test_bad_inputs_are_refused_with_a_clear_message(kwargs: dict[str, object],
                                                     message: str) -> None:
    base: dict[str, object] = {"memory_bytes": GIB, "dirty_rate_pages_s": 0.0,
                               "bandwidth_bytes_s": BW}
    with pytest.raises(ValueError, match=message):
        MigrationInputs(**{**base, **kwargs})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- calibration JSON


def test_calibration_json_round_trip() -> None:
    cal = Calibration(setup_s=0.7, bandwidth_efficiency=0.9, fitted_on=12, source="lab A")
    text = cal.to_json()
    assert json.loads(text)["version"] == 1
    assert Calibration.from_json(text) == cal


def test_calibration_missing_parameters_take_defaults() -> None:
    text = json.dumps({"schema": "edgeiot.calibration", "version": 1,
                       "parameters": {"setup_s": 1.5}})
    assert Calibration.from_json(text) == Calibration(setup_s=1.5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"schema": "other", "version": 1, "parameters": {}}', "not a calibration"),
        ('{"schema": "edgeiot.calibration", "version": 99, "parameters": {}}',
         "unsupported calibration version 99"),
        ('{"schema": "edgeiot.calibration", "version": 1}', "no 'parameters'"),
        ('{"schema": "edgeiot.calibration", "version": 1, "parameters": {"setup": 1}}',
         "unknown calibration parameter"),
        ('{"schema": "edgeiot.calibration", "version": 1, "parameters": {"setup_s": "x"}}',
         "setup_s must be a number"),
        ('{"schema": "edgeiot.calibration", "version": 1, "parameters": {"setup_s": -1}}',
         "setup_s must be a finite number >= 0"),
        ('{"schema": "edgeiot.calibration", "version": 1, '
         '"parameters": {"bandwidth_efficiency": 0}}', "bandwidth_efficiency must be in"),
    ],
)
def test_malformed_calibration_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Calibration.from_json(text)


# --------------------------------------------------------------------------- properties

memories = st.integers(min_value=16, max_value=4096).map(lambda mib: mib * MIB)
rates = st.floats(min_value=0, max_value=60_000, allow_nan=False)
bandwidths = st.floats(min_value=1, max_value=500, allow_nan=False).map(lambda b: b * MIB)
fractions = st.floats(min_value=0.01, max_value=1.0)
LAB = Calibration(setup_s=0.4, bandwidth_efficiency=0.9, zero_scan_s_per_gib=0.3,
                  downtime_overhead_s=0.02)
# a slow CPU (100 MiB/s of data, 4 s/GiB of zero pages): the generated caps cross it
CPU_BOUND = replace(LAB, zero_scan_s_per_gib=4.0, stop_copy_s_per_mib=0.01)
labs = st.sampled_from([LAB, CPU_BOUND])


def _inputs(memory: int, rate: float, bandwidth: float, ws_fraction: float,
            fp_fraction: float | None) -> MigrationInputs:
    return MigrationInputs(memory, rate, bandwidth, working_set_bytes=int(memory * ws_fraction),
                           footprint_bytes=None if fp_fraction is None
                           else int(memory * fp_fraction))


@settings(max_examples=80, deadline=None)
@given(memories, rates, bandwidths, st.floats(min_value=1.0, max_value=4.0), fractions,
       st.none() | fractions, labs)
# issue 4: leftover zero pages charged per page byte in the pause (0.1 % slower at 4×)
@example(16 * MIB, 0.0, 14.0 * MIB, 4.0, 1.0, 0.03125, LAB)
# a bigger first slot scanned more zero pages live (more dirt) before slots counted CPU time
@example(16 * MIB, 15791.0, 51.0 * MIB, 2.0, 1.0, 0.015625, LAB)
def test_more_bandwidth_is_never_slower(memory: int, rate: float, bandwidth: float,
                                        factor: float, ws: float, fp: float | None,
                                        lab: Calibration) -> None:
    slow = predict(_inputs(memory, rate, bandwidth, ws, fp), lab, with_uncertainty=False)
    fast = predict(_inputs(memory, rate, bandwidth * factor, ws, fp), lab,
                   with_uncertainty=False)
    assert fast.total_time_s <= slow.total_time_s * (1 + 1e-9)
    assert fast.converges or not slow.converges


@settings(max_examples=80, deadline=None)
@given(memories, rates, bandwidths, st.floats(min_value=1.0, max_value=4.0), fractions,
       st.none() | fractions, labs)
# a leftover of round 0's tail pages (not rewritten) outlived one of dirty pages (rewritten)
@example(16 * MIB, 1.0, 1.0 * MIB, 2.0, 0.01, None, LAB)
def test_more_dirtying_is_never_faster(memory: int, rate: float, bandwidth: float,
                                       factor: float, ws: float, fp: float | None,
                                       lab: Calibration) -> None:
    calm = predict(_inputs(memory, rate, bandwidth, ws, fp), lab, with_uncertainty=False)
    busy = predict(_inputs(memory, rate * factor, bandwidth, ws, fp), lab,
                   with_uncertainty=False)
    assert busy.total_time_s >= calm.total_time_s * (1 - 1e-9)
    assert busy.transferred_bytes >= calm.transferred_bytes * (1 - 1e-9)


@settings(max_examples=60, deadline=None)
@given(memories, rates, bandwidths, fractions, st.none() | fractions)
def test_transferred_at_least_footprint_and_time_at_least_setup(
        memory: int, rate: float, bandwidth: float, ws: float, fp: float | None) -> None:
    inputs = _inputs(memory, rate, bandwidth, ws, fp)
    p = predict(inputs, LAB)
    assert p.transferred_bytes >= LAB.footprint_for(inputs)
    assert p.total_time_s >= LAB.setup_s + p.downtime_s
    assert p.iterations >= 3
    assert p.total_time_uncertainty_s > 0


# --------------------------------------------------------------------------- live estimate

PLAN = MigrationInputs(GIB, 0, BW, footprint_bytes=GIB)


def test_live_estimate_later_round_uses_measured_rates() -> None:
    sample = JobSample(elapsed_s=12.0, iteration=3, remaining_bytes=50 * MIB,
                       dirty_rate_pages_s=0.0, bandwidth_bytes_s=50 * MIB)
    est = estimate_remaining(sample, PLAN, IDEAL)
    # 50 MiB at 50 MiB/s, of which the leftover ς − χ/2 = 15 − 2.5 MiB goes in the
    # uncapped pause (4 ms/MiB): 37.5 / 50 + 12.5 × 0.004
    assert est.converges and est.remaining_s == pytest.approx(0.75 + 0.05)


def test_live_estimate_round_zero_counts_only_unsent_wire_bytes() -> None:
    plan = MigrationInputs(GIB, 0, BW, footprint_bytes=200 * MIB)
    sample = JobSample(elapsed_s=1.0, iteration=1, remaining_bytes=900 * MIB,
                       processed_bytes=100 * MIB, bandwidth_bytes_s=BW)
    # QEMU says 900 MiB remain, but only 100 MiB of them are data (1/9). A 10 MiB slot of
    # wire covers 90 MiB of such pages (> ς = 30), so ς/2 = 15 MiB of pages stay for the
    # pause: 15/9 MiB of data at 4 ms/MiB instead of 1/B
    expected = (100 - 15 / 9) / 100 + 15 / 9 * 0.004
    assert estimate_remaining(sample, plan, IDEAL).remaining_s == pytest.approx(expected)


def test_live_estimate_with_measured_dirty_rate_above_bandwidth_is_infinite() -> None:
    sample = JobSample(elapsed_s=20.0, iteration=4, remaining_bytes=500 * MIB,
                       dirty_rate_pages_s=TRIPLE_BW_PAGES, bandwidth_bytes_s=BW)
    est = estimate_remaining(sample, PLAN, IDEAL)
    assert not est.converges and math.isinf(est.remaining_s)


def test_live_estimate_counts_dirtying_since_the_round_began() -> None:
    plan = MigrationInputs(GIB, HALF_BW_PAGES, BW, footprint_bytes=GIB)
    fresh = JobSample(10.0, 2, 100 * MIB, HALF_BW_PAGES, BW, round_elapsed_s=0.0)
    late = JobSample(10.0, 2, 100 * MIB, HALF_BW_PAGES, BW, round_elapsed_s=3.0)
    assert (estimate_remaining(late, plan, IDEAL).remaining_s
            > estimate_remaining(fresh, plan, IDEAL).remaining_s)


# --------------------------------------------------------------------------- monotone ETA


def test_eta_first_estimate_is_shown_as_is() -> None:
    state = monotone_eta(None, 2.0, 8.0)
    assert state.end_s == 10.0 and state.remaining_s == 8.0


def test_eta_keeps_display_inside_the_evidence_band() -> None:
    states = monotone_series([(0.0, 10.0, 1.0), (1.0, 9.5, 1.0)])
    assert states[1].end_s == 10.0  # raw end 10.5 ± 1 contains 10: no jitter


def test_eta_moves_earlier_to_the_band_edge() -> None:
    states = monotone_series([(0.0, 10.0, 1.0), (1.0, 4.0, 1.0)])
    assert states[1].end_s == 6.0  # raw end 5 ± 1: upper edge


def test_eta_holds_instead_of_running_backwards() -> None:
    states = monotone_series([(0.0, 10.0, 0.0), (1.0, 20.0, 0.0), (2.0, 20.0, 0.0)])
    assert [s.remaining_s for s in states] == [10.0, 10.0, 10.0]
    assert states[1].holding and states[2].holding


def test_eta_infinite_estimate_holds() -> None:
    states = monotone_series([(0.0, 5.0, 0.0), (1.0, math.inf, math.inf)])
    assert states[1].remaining_s == 5.0


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.floats(min_value=0, max_value=5),
                          st.floats(min_value=0, max_value=1e4) | st.just(math.inf),
                          st.floats(min_value=0, max_value=100)), min_size=1, max_size=30))
def test_eta_remaining_never_increases(steps: list[tuple[float, float, float]]) -> None:
    elapsed, points = 0.0, []
    for dt, raw, spread in steps:
        elapsed += dt
        points.append((elapsed, raw, spread))
    shown = [s.remaining_s for s in monotone_series(points)]
    assert all(b <= a + 1e-9 for a, b in zip(shown, shown[1:], strict=False))


# --------------------------------------------------------------------------- stall detector


def _samples(starts_mib: list[float]) -> list[JobSample]:
    """Two samples per iteration (start of round, half-way), plus one in a new round."""
    out = [JobSample(0.0, 1, GIB)]
    for i, start in enumerate(starts_mib, start=2):
        out += [JobSample(float(i), i, start * MIB), JobSample(i + 0.5, i, start * MIB / 2)]
    out.append(JobSample(99.0, len(starts_mib) + 2, 1.0))
    return out


def test_stall_flagged_when_dirty_set_stops_shrinking() -> None:
    verdict = detect_stall(_samples([400, 300, 300, 310, 305]))
    assert verdict.stalled and "not shrunk over the last 3 iterations" in verdict.reason


def test_converging_migration_is_not_stalled() -> None:
    assert not detect_stall(_samples([400, 300, 200, 150, 100])).stalled


def test_stall_needs_enough_rounds_and_ignores_round_zero() -> None:
    assert not detect_stall(_samples([300, 300, 300])).stalled  # 3 dirty rounds < window + 1
    assert not detect_stall([]).stalled
    with pytest.raises(ValueError):
        detect_stall([], window=0)


# --------------------------------------------------------------------------- measured rates

from orchestrator.model.precopy import _Guest  # noqa: E402


def test_a_measured_rate_grows_like_a_uniform_writer_through_the_measurement():
    # W = 1000 pages, a uniform writer at 500 pages/s: over T = 1 s page sampling sees
    # D = 1000·(1 − e^(−0.5)) = 393.47 pages. The model then grows as 1000·(1 − e^(−0.5 t)):
    # at t = 0.3 s, 1000·(1 − e^(−0.15)) = 139.3 pages, which is what the writer dirties.
    page = 4096
    seen = 1000 * (1 - math.exp(-0.5)) * page
    guest = _Guest(seen / 1.0, 1000 * page, 0.0, measured_over_s=1.0)
    assert guest.dirtied(0.3) / page == pytest.approx(1000 * (1 - math.exp(-0.15)), rel=1e-9)
    assert guest.dirtied(1.0) == pytest.approx(seen)
    from agent.guest.edgeiot_agent.workloads import expected_distinct
    assert guest.dirtied(0.3) / page == pytest.approx(expected_distinct("uniform", 150, 1000),
                                                      rel=0.01)


def test_a_saturated_measurement_means_the_set_is_rewritten_within_a_round():
    # 8 MiB seen over 1 s on an 8 MiB set: read as 99 % of it, λ = ln(100) = 4.605 /s, so a
    # 0.1 s round finds 8·(1 − e^(−0.4605)) = 2.95 MiB, where a write rate of 8 MiB/s
    # would say 0.8 MiB
    guest = _Guest(8 * MIB, 8 * MIB, 0.0, measured_over_s=1.0)
    assert guest.dirtied(0.1) / MIB == pytest.approx(8 * (1 - math.exp(-0.1 * math.log(100))))
    linear = _Guest(8 * MIB, 8 * MIB, 0.0)
    assert linear.dirtied(0.1) / MIB == pytest.approx(0.8)


def test_a_saturated_measurement_is_not_called_converging():
    # a fast writer on 8 MiB reads 8 MiB/s on page sampling; at 20 MiB/s and 50 ms the
    # linear reading converges, the measured one (correctly: W > ς) does not
    base = dict(memory_bytes=256 * MIB, dirty_rate_pages_s=2048, bandwidth_bytes_s=20 * MIB,
                downtime_limit_s=0.05, working_set_bytes=8 * MIB)
    assert predict(MigrationInputs(**base)).converges
    assert not predict(MigrationInputs(**base, dirty_window_s=1.0)).converges


def test_an_idle_measurement_changes_nothing():
    base = dict(memory_bytes=256 * MIB, dirty_rate_pages_s=0, bandwidth_bytes_s=20 * MIB)
    assert (predict(MigrationInputs(**base, dirty_window_s=1.0)).total_time_s
            == predict(MigrationInputs(**base)).total_time_s)


def test_a_bad_window_is_refused():
    with pytest.raises(ValueError, match="window"):
        MigrationInputs(GIB, 0, BW, dirty_window_s=0.0)
