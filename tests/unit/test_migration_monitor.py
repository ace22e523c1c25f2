"""The migration monitor, driven by a scripted job and an injected clock (no libvirt)."""

import libvirt
import pytest

from orchestrator.errors import OrchestratorError, UserError
from orchestrator.fog.jobstats import parse_completed, parse_sample
from orchestrator.fog.migration import (
    MigrationRequest,
    TimeoutAction,
    migration_flags,
    migration_params,
    timeout_action,
    watch,
)

MiB = 2**20


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def job(iteration, remaining, processed, dirty=0, bps=20 * MiB, elapsed=0):
    return {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "time_elapsed": elapsed,
            "memory_iteration": iteration, "memory_dirty_rate": dirty,
            "data_remaining": remaining, "data_processed": processed,
            "data_total": remaining + processed, "memory_bps": bps}


class ScriptedJob:
    """Returns the scripted stats one per call, then reports the job finished."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = 0

    def stats(self):
        self.calls += 1
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def finished(self):
        return not self.script


def test_samples_every_interval_with_time_from_the_injected_clock():
    clock = FakeClock()
    scripted = ScriptedJob([job(1, 200 * MiB, 0), job(1, 100 * MiB, 100 * MiB),
                            job(2, 10 * MiB, 210 * MiB, dirty=3000)])
    seen_live = []
    seen = watch(scripted.stats, scripted.finished, lambda a: None, timeout_s=None,
                 postcopy=False, clock=clock, sleep=clock.sleep, interval_s=0.2,
                 on_sample=seen_live.append)
    assert [s.t_s for s in seen.samples] == [0.0, 0.2, 0.4]
    assert [s.iteration for s in seen.samples] == [1, 1, 2]
    assert seen.samples[-1].dirty_rate_pages_s == 3000
    assert seen_live == seen.samples
    assert seen.action is TimeoutAction.NONE



def test_slow_stats_and_sinks_do_not_stretch_the_interval():
    """jobStats' round trip and the record write count inside the 200 ms, not on top of it."""
    clock = FakeClock()
    scripted = ScriptedJob([job(1, 200 * MiB - k * MiB, k * MiB) for k in range(6)])

    def slow_stats():
        clock.now += 0.05  # libvirt's round trip
        return scripted.stats()

    def slow_sink(_sample):
        clock.now += 0.03  # the record's commit and the progress bar

    seen = watch(slow_stats, scripted.finished, lambda a: None, timeout_s=None, postcopy=False,
                 clock=clock, sleep=clock.sleep, interval_s=0.2, on_sample=slow_sink)
    gaps = [b.t_s - a.t_s for a, b in zip(seen.samples, seen.samples[1:], strict=False)]
    assert len(gaps) == 5 and all(g == pytest.approx(0.2) for g in gaps)


def test_a_late_sample_is_followed_at_once_then_the_grid_resumes():
    clock = FakeClock()
    scripted = ScriptedJob([job(1, 100 * MiB, 0)] * 5)
    costs = iter([0.0, 0.5, 0.0, 0.0, 0.0])  # the second jobStats call hangs for 0.5 s

    def stats():
        result = scripted.stats()
        clock.now += next(costs)
        return result

    seen = watch(stats, scripted.finished, lambda a: None, timeout_s=None, postcopy=False,
                 clock=clock, sleep=clock.sleep, interval_s=0.2)
    assert [s.t_s for s in seen.samples] == pytest.approx([0.0, 0.2, 0.7, 0.9, 1.1])

def test_timeout_aborts_once():
    clock = FakeClock()
    scripted = ScriptedJob([job(i, 100 * MiB, i * MiB, dirty=50000) for i in range(1, 30)])
    acted = []
    seen = watch(scripted.stats, scripted.finished, acted.append, timeout_s=1.0,
                 postcopy=False, clock=clock, sleep=clock.sleep, interval_s=0.2)
    assert acted == [TimeoutAction.ABORT]
    assert seen.action is TimeoutAction.ABORT
    assert len(seen.samples) == 29


def test_timeout_switches_to_postcopy_when_allowed():
    clock = FakeClock()
    scripted = ScriptedJob([job(i, 100 * MiB, 0) for i in range(10)])
    acted = []
    watch(scripted.stats, scripted.finished, acted.append, timeout_s=0.5, postcopy=True,
          clock=clock, sleep=clock.sleep)
    assert acted == [TimeoutAction.POSTCOPY]


def test_a_failing_action_is_recorded_not_raised():
    clock = FakeClock()
    scripted = ScriptedJob([job(1, MiB, 0)] * 5)

    def act(_action):
        raise OrchestratorError("abort job of vm: no job")
    seen = watch(scripted.stats, scripted.finished, act, timeout_s=0.1, postcopy=False,
                 clock=clock, sleep=clock.sleep)
    assert seen.action_error == "abort job of vm: no job"


def test_job_gone_between_checks_is_not_a_sample():
    clock = FakeClock()
    scripted = ScriptedJob([job(1, MiB, 0), {"type": libvirt.VIR_DOMAIN_JOB_NONE},
                            OrchestratorError("domain not found")])
    seen = watch(scripted.stats, scripted.finished, lambda a: None, timeout_s=None,
                 postcopy=False, clock=clock, sleep=clock.sleep)
    assert len(seen.samples) == 1


@pytest.mark.parametrize("elapsed, timeout, postcopy, acted, expected", [
    (0.5, None, False, False, TimeoutAction.NONE),
    (0.5, 1.0, False, False, TimeoutAction.NONE),
    (1.0, 1.0, False, False, TimeoutAction.ABORT),
    (5.0, 1.0, True, False, TimeoutAction.POSTCOPY),
    (5.0, 1.0, True, True, TimeoutAction.NONE),
])
def test_timeout_action_table(elapsed, timeout, postcopy, acted, expected):
    assert timeout_action(elapsed, timeout, postcopy, acted) is expected


def test_completed_stats_and_max_dirty_rate():
    samples = [parse_sample(job(1, 0, 0, dirty=10), 0), parse_sample(job(2, 0, 0, dirty=900), 1)]
    final = parse_completed({"type": 3, "time_elapsed": 4030, "downtime": 176,
                             "setup_time": 12, "memory_iteration": 3,
                             "data_processed": 82_300_000, "memory_total": 268_435_456,
                             "memory_constant": 40000, "memory_normal": 20000,
                             "memory_normal_bytes": 81_920_000, "memory_bps": 21_000_000},
                            samples)
    assert (final.total_time_ms, final.downtime_ms, final.setup_time_ms) == (4030, 176, 12)
    assert final.transferred_bytes == 82_300_000 and final.iterations == 3
    assert final.dirty_rate_pages_s == 900


def test_request_validation_and_flags():
    with pytest.raises(UserError, match="--bandwidth"):
        MigrationRequest("vm", "fog2", bandwidth_mib_s=0)
    with pytest.raises(UserError, match="--downtime-ms"):
        MigrationRequest("vm", "fog2", downtime_ms=-5)
    with pytest.raises(UserError, match="--timeout"):
        MigrationRequest("vm", "fog2", timeout_s=0)
    request = MigrationRequest("vm", "fog2", bandwidth_mib_s=20, auto_converge=True)
    flags = migration_flags(request)
    for flag in (libvirt.VIR_MIGRATE_LIVE, libvirt.VIR_MIGRATE_PEER2PEER,
                 libvirt.VIR_MIGRATE_PERSIST_DEST, libvirt.VIR_MIGRATE_UNDEFINE_SOURCE,
                 libvirt.VIR_MIGRATE_AUTO_CONVERGE):
        assert flags & flag
    assert not flags & libvirt.VIR_MIGRATE_POSTCOPY
    assert migration_params(request) == {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 20}
    assert migration_params(MigrationRequest("vm", "fog2")) == {}
    assert not flags & libvirt.VIR_MIGRATE_TLS
    assert migration_flags(MigrationRequest("vm", "fog2", tls=True)) & libvirt.VIR_MIGRATE_TLS


def rounds(starts, per_round=3):
    """Scripted job whose dirty set at the start of each iteration ≥ 2 is `starts[i]`."""
    script = [job(1, 200 * MiB, 0)] * per_round
    for i, start in enumerate(starts, start=2):
        script += [job(i, start - k * MiB, 0, dirty=90000) for k in range(per_round)]
    return script


def test_a_stalled_precopy_is_aborted_without_waiting_for_a_timeout():
    clock = FakeClock()
    scripted = ScriptedJob(rounds([60 * MiB] * 8))
    acted = []
    seen = watch(scripted.stats, scripted.finished, acted.append, timeout_s=None,
                 postcopy=False, clock=clock, sleep=clock.sleep)
    assert acted == [TimeoutAction.ABORT]
    assert "has not shrunk" in seen.stall


def test_a_converging_precopy_is_left_alone():
    clock = FakeClock()
    scripted = ScriptedJob(rounds([80 * MiB, 40 * MiB, 20 * MiB, 10 * MiB, 5 * MiB]))
    acted = []
    seen = watch(scripted.stats, scripted.finished, acted.append, timeout_s=None,
                 postcopy=False, clock=clock, sleep=clock.sleep)
    assert acted == [] and seen.stall is None


@pytest.mark.parametrize("postcopy, auto_converge, expected", [
    (False, False, [TimeoutAction.ABORT]),
    (True, False, [TimeoutAction.POSTCOPY]),
    (False, True, []),  # auto-converge is the chosen remedy: recorded, not acted on
])
def test_stall_policy(postcopy, auto_converge, expected):
    clock = FakeClock()
    scripted = ScriptedJob(rounds([60 * MiB] * 8))
    acted = []
    seen = watch(scripted.stats, scripted.finished, acted.append, timeout_s=None,
                 postcopy=postcopy, auto_converge=auto_converge, clock=clock,
                 sleep=clock.sleep)
    assert acted == expected and seen.stall


def test_a_call_that_outlives_its_aborted_job_is_abandoned_after_the_grace():
    clock = FakeClock()
    script = [job(1, 100 * MiB, i * MiB) for i in range(10)]
    script += [{"type": libvirt.VIR_DOMAIN_JOB_NONE}] * 500  # the job is gone, the call hangs
    scripted = ScriptedJob(script)
    acted = []
    seen = watch(scripted.stats, scripted.finished, acted.append, timeout_s=1.0,
                 postcopy=False, clock=clock, sleep=clock.sleep, job_gone_grace_s=5.0)
    assert acted == [TimeoutAction.ABORT] and seen.abandoned
    assert 5.0 <= clock.now - 100.0 - 2.0 <= 5.5  # gave up 5 s after the job vanished


def test_no_job_yet_without_any_action_is_not_abandoned():
    clock = FakeClock()
    scripted = ScriptedJob([{"type": libvirt.VIR_DOMAIN_JOB_NONE}] * 200 + [job(1, MiB, 0)])
    seen = watch(scripted.stats, scripted.finished, lambda a: None, timeout_s=None,
                 postcopy=False, clock=clock, sleep=clock.sleep, job_gone_grace_s=5.0)
    assert not seen.abandoned and len(seen.samples) == 1


# --------------------------------------------------------------------------- live ETA

import math  # noqa: E402

from orchestrator.commands.migrate import eta_text  # noqa: E402
from orchestrator.model.live import (  # noqa: E402
    STALL_CONFIRM_S,
    EtaPoint,
    JobSample,
    LiveEta,
    eta_checkpoints,
    never_backwards,
)
from orchestrator.model.precopy import MIB, MigrationInputs, predict  # noqa: E402


def rounds_samples(starts_mib, round_s, dt=0.2, rate_pages_s=10_000, bw=8 * MIB):
    """Samples of dirty rounds (iteration 2 on), each starting at `starts_mib` and draining."""
    t, out = 0.0, []
    for i, start in enumerate(starts_mib):
        for k in range(round(round_s / dt)):
            left = start * MIB * (1 - k * dt / round_s)
            out.append(JobSample(elapsed_s=round(t, 3), iteration=i + 2, remaining_bytes=left,
                                 dirty_rate_pages_s=rate_pages_s, bandwidth_bytes_s=bw))
            t += dt
    return out


HOPELESS = MigrationInputs(256 * MIB, 10_000, 8 * MIB)  # 39 MiB/s of dirtying over 8 MiB/s


def test_an_unknown_end_shows_a_question_mark_not_a_countdown_from_zero():
    # the case: 1,500 pages/s at 8 MiB/s, predicted never to converge
    inputs = MigrationInputs(256 * MIB, 1500, 8 * MIB)
    prediction = predict(inputs)
    assert not prediction.converges
    live = LiveEta(inputs)
    live.seed(prediction.total_time_s)
    first = live.update(JobSample(0.2, 1, 226 * MIB, bandwidth_bytes_s=8 * MIB))
    assert eta_text(first) != "0.0 s"
    assert eta_text(first) == "?" or first.remaining_s > 20


def test_a_hopeless_pre_copy_is_flagged_within_the_stated_time():
    live = LiveEta(HOPELESS)
    flagged = None
    for sample in rounds_samples([60, 60, 60, 60, 60], round_s=1.0):
        live.update(sample)
        if live.stall_reason and flagged is None:
            flagged = sample.elapsed_s
    assert flagged is not None
    # two completed dirty rounds (2 s) are needed to see no shrink; the model called it
    # hopeless from the first sample, so the flag comes at most STALL_CONFIRM_S + a sample
    # interval after the second round completes
    assert flagged <= 2.0 + STALL_CONFIRM_S + 0.2
    assert live.stall_flagged_s == flagged


def test_a_shrinking_pre_copy_is_never_flagged_even_if_the_model_is_wrong():
    live = LiveEta(HOPELESS)  # the model thinks it hopeless; the rounds say otherwise
    for sample in rounds_samples([80, 50, 30, 18, 10, 6], round_s=1.0):
        live.update(sample)
    assert live.stall_reason is None


def test_the_displayed_time_left_never_grows():
    live = LiveEta(MigrationInputs(256 * MIB, 0, 20 * MIB))
    live.seed(5.0)
    # remaining bytes that jump up (a new round) and a bandwidth that wobbles
    for i, (left, bw) in enumerate([(200, 20), (180, 25), (190, 10), (150, 5), (150, 30),
                                    (40, 20), (60, 20), (5, 20)]):
        live.update(JobSample(0.5 * (i + 1), 1 if i < 5 else 2, left * MIB,
                              bandwidth_bytes_s=bw * MIB))
    assert never_backwards(live.history)
    shown = [p.remaining_s for p in live.history]
    assert all(b <= a + 1e-9 for a, b in zip(shown, shown[1:], strict=False))


def test_eta_checkpoints_hand_worked():
    history = [EtaPoint(0.0, 10.0, 10.0, False), EtaPoint(1.0, 9.0, 9.0, False),
               EtaPoint(2.0, 8.5, 9.5, True), EtaPoint(5.0, 5.5, 5.0, False)]
    rows = eta_checkpoints(history, end_s=10.0)
    # 10 %: t = 1 → shown 9 s, really 9 s left; 25 %: t = 2.5 → last shown at 2 s: 8.5 vs 8
    assert rows[0]["eta_s"] == 9.0 and rows[0]["error_pct"] == 0.0
    assert rows[1]["elapsed_s"] == 2.0 and rows[1]["error_pct"] == pytest.approx(6.25)
    # 50 %: t = 5 → 5.5 vs 5 (10 %); 75 %: t = 7.5 → still the one shown at 5 s
    assert rows[2]["error_pct"] == pytest.approx(10.0)
    assert rows[3]["elapsed_s"] == 5.0
    unknown = eta_checkpoints([EtaPoint(0.0, math.inf, math.inf, True)], end_s=4.0)
    assert unknown[0]["eta_s"] is None and unknown[0]["error_pct"] is None


def test_prometheus_gets_predicted_beside_measured_per_vm():
    from orchestrator.metrics import predicted_vs_measured_families
    old = {"id": 1, "vm": "a", "status": "completed", "prediction": {"total_time_s": 9.0},
           "result": {"total_time_ms": 1000}}
    new = {"id": 2, "vm": "a", "status": "completed",
           "prediction": {"total_time_s": 4.0, "transferred_bytes": 1e8, "downtime_s": 0.05,
                          "iterations": 5},
           "result": {"total_time_ms": 4500, "transferred_bytes": 9e7, "downtime_ms": 40,
                      "iterations": 6}}
    other = {"id": 3, "vm": "b", "status": "completed", "prediction": None,
             "result": {"total_time_ms": 2000}}
    got = {(f.name, tuple(s.labels.values())): s.value
           for f in predicted_vs_measured_families([new, old, other]) for s in f.samples}
    assert got[("edgeiot_migration_time_seconds", ("a", "predicted"))] == 4.0  # the latest
    assert got[("edgeiot_migration_time_seconds", ("a", "measured"))] == 4.5
    assert got[("edgeiot_migration_bytes", ("a", "measured"))] == 9e7
    assert got[("edgeiot_migration_downtime_last_seconds", ("a", "measured"))] == 0.04
    assert got[("edgeiot_migration_iterations", ("a", "predicted"))] == 5
    assert got[("edgeiot_migration_time_seconds", ("b", "measured"))] == 2.0
    assert ("edgeiot_migration_time_seconds", ("b", "predicted")) not in got


def test_setup_samples_do_not_pin_the_eta_at_zero():
    # libvirt's first samples: iteration 0, nothing remaining, nothing processed
    inputs = MigrationInputs(128 * MIB, 0, 20 * MIB)
    live = LiveEta(inputs)
    live.seed(6.0)
    for t in (0.2, 0.4):
        live.update(JobSample(t, 0, 0.0))
    state = live.update(JobSample(0.6, 1, 120 * MIB, bandwidth_bytes_s=20 * MIB,
                                  processed_bytes=4 * MIB))
    assert state.remaining_s > 3.0  # ~120 MiB of mostly zero pages still to go, not 0 s
    # while the destination starts, the prediction plus libvirt's finish counts down
    finish = live.calibration.finish_s if live.calibration else 2.5
    assert [p.remaining_s for p in live.history[:2]] == pytest.approx(
        [6.0 + finish - 0.2, 6.0 + finish - 0.4])
    unseeded = LiveEta(inputs)
    unseeded.update(JobSample(0.2, 0, 0.0))
    assert eta_text(unseeded.state) == "?"  # no prediction: unknown, not a countdown
