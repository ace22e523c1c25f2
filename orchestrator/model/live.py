"""Live estimates during a migration: time left from a job-stats sample, the displayed ETA
that never runs backwards, and the stall detector.

Why apart from the model: these run on every sample the monitor takes and read the model's
internals (`precopy`) from a point in the middle of a migration; the pre-migration predictor
does not need them. Pure: numbers in, numbers out (the monitor passes its clock's readings).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from orchestrator.model.calfile import DEFAULT_CALIBRATION, MIB, Calibration, MigrationInputs
from orchestrator.model.precopy import (
    _downtime,
    _guest_for,
    _link_for,
    _Pages,
    _simulate,
)

# --------------------------------------------------------------------------- live re-estimate


@dataclass(frozen=True)
class JobSample:
    """One job-stats snapshot, as libvirt's jobStats reports it during a migration.

    `iteration` is libvirt's memory_iteration (1 during round 0). The dirty rate shows from
    iteration 2 on (LAB-NOTES); 0 before that means "not measured yet", not "idle".
    """

    elapsed_s: float
    iteration: int
    remaining_bytes: float
    dirty_rate_pages_s: float = 0.0
    bandwidth_bytes_s: float = 0.0
    processed_bytes: float = 0.0
    round_elapsed_s: float | None = None  # time since this iteration began, if tracked


@dataclass(frozen=True)
class RemainingEstimate:
    remaining_s: float  # inf when the migration will not converge at current rates
    converges: bool
    rounds_left: int
    downtime_s: float
    uncertainty_s: float


def estimate_remaining(sample: JobSample, inputs: MigrationInputs,
                       calibration: Calibration | None = None) -> RemainingEstimate:
    """Time left from a live sample: finish this pass, then the model from here on.

    Live measurements win over the plan: the sample's bandwidth (memory_bps) is already an
    achieved rate, so no efficiency factor applies; its dirty rate replaces the planned one
    once QEMU reports it. In round 0, QEMU's `remaining` still counts unvisited zero pages,
    so the pass left is `remaining` pages of which only the planned round-0 bytes not yet
    processed are data.
    """
    cal = calibration or DEFAULT_CALIBRATION
    bandwidth = (sample.bandwidth_bytes_s if sample.bandwidth_bytes_s > 0
                 else inputs.bandwidth_bytes_s * cal.bandwidth_efficiency)
    live_rate = sample.iteration >= 2 and sample.dirty_rate_pages_s > 0
    rate_pages = sample.dirty_rate_pages_s if live_rate else inputs.dirty_rate_pages_s
    first, share = _pass_left(sample, inputs, cal)
    link = _link_for(inputs, cal, bandwidth, share)
    guest = _guest_for(inputs, cal, rate_pages * inputs.page_size, measured=not live_rate)
    run = _simulate(first, link, guest, elapsed_s=sample.round_elapsed_s or 0.0)
    downtime = _downtime(run, link, cal)
    if not run.converges:
        return RemainingEstimate(math.inf, False, len(run.rounds), downtime, math.inf)
    remaining = sum(r.duration_s for r in run.rounds) + downtime
    spread = cal.time_rel_spread * remaining + cal.downtime_abs_spread_s
    return RemainingEstimate(remaining, True, len(run.rounds), downtime, spread)


def _pass_left(sample: JobSample, inputs: MigrationInputs,
               cal: Calibration) -> tuple[_Pages, float]:
    """The pass under way as pages, and the non-zero share of its round-0 tail."""
    remaining = max(0.0, sample.remaining_bytes)
    if sample.iteration >= 2:
        return _Pages(data=remaining), 1.0
    z = cal.zero_page_wire_ratio
    footprint = cal.footprint_for(inputs)
    planned = footprint + z * (inputs.memory_bytes - footprint)
    floor = z * remaining  # even an all-zero rest costs its markers
    wire = min(remaining, max(planned - sample.processed_bytes, floor))
    share = (wire / remaining - z) / (1 - z) if remaining > 0 and z < 1 else 1.0
    return _Pages(tail=remaining), min(1.0, max(0.0, share))


# --------------------------------------------------------------------------- monotone ETA


@dataclass(frozen=True)
class EtaState:
    """What the progress bar shows: an end time (s since start) and the time left."""

    elapsed_s: float
    end_s: float
    holding: bool = False  # evidence says later: the countdown is paused, not reversed

    @property
    def remaining_s(self) -> float:
        return max(0.0, self.end_s - self.elapsed_s)


def monotone_eta(previous: EtaState | None, elapsed_s: float, raw_remaining_s: float,
                 uncertainty_s: float = 0.0) -> EtaState:
    """Next displayed ETA; the displayed time left never increases.

    The rule: each raw estimate gives a band of end times, raw ± uncertainty.
      * display inside the band → keep it (noise does not move the bar);
      * display after the band  → move earlier, to the band's upper edge;
      * display before the band → evidence forces later: move later, but by at most the
        time since the last sample, so the countdown holds (`holding`) rather than climbing.
    The first finite estimate is shown as is (seed it with the pre-migration prediction,
    `predict(...).total_time_s`). Until there is one, the end is unknown (∞: the progress bar
    shows "?", never a countdown from 0 s, which is what a 24 s migration once showed all
    along). Later infinite estimates (no convergence) hold.
    """
    raw_end = elapsed_s + max(0.0, raw_remaining_s)
    if previous is None or not math.isfinite(previous.end_s):
        return EtaState(elapsed_s, raw_end, holding=not math.isfinite(raw_end))
    step = max(0.0, elapsed_s - previous.elapsed_s)
    if not math.isfinite(raw_end):
        return EtaState(elapsed_s, max(previous.end_s + step, elapsed_s), holding=True)
    spread = uncertainty_s if math.isfinite(uncertainty_s) else math.inf
    low, high = raw_end - spread, raw_end + spread
    end, holding = previous.end_s, False
    if end > high:
        end = high
    elif end < low:
        end, holding = min(low, end + step), True
    return EtaState(elapsed_s, max(end, elapsed_s), holding)


def monotone_series(points: Sequence[tuple[float, float, float]]) -> list[EtaState]:
    """`monotone_eta` over (elapsed_s, raw_remaining_s, uncertainty_s) triples."""
    states: list[EtaState] = []
    for elapsed, raw, spread in points:
        states.append(monotone_eta(states[-1] if states else None, elapsed, raw, spread))
    return states


# --------------------------------------------------------------------------- stall detector


class IterationSample(Protocol):
    """Anything with libvirt's iteration counter and remaining bytes (JobSample, records)."""

    @property
    def iteration(self) -> int: ...

    @property
    def remaining_bytes(self) -> float: ...


@dataclass(frozen=True)
class StallVerdict:
    stalled: bool
    reason: str = ""
    round_start_bytes: tuple[float, ...] = field(default=())


def detect_stall(samples: Sequence[IterationSample], window: int = 3,
                 min_shrink: float = 0.10) -> StallVerdict:
    """Stalled: the dirty set at the start of each of the last `window` completed rounds has
    not shrunk by `min_shrink` versus the best earlier round.

    Why round starts: within a round `remaining` always falls (pages go out); progress
    means the dirty set found at each sync gets smaller. Round 0 (iteration 1) is skipped:
    its start is the whole memory, not a dirty set. The current round is incomplete and is
    skipped too, so `window` + 1 completed dirty rounds are needed before a verdict.
    """
    if window < 1 or not 0 <= min_shrink < 1:
        raise ValueError("window must be >= 1 and min_shrink in [0, 1)")
    starts = _round_starts(samples)
    if len(starts) < window + 1:
        return StallVerdict(False, "", tuple(starts))
    best_before = min(starts[:-window])
    recent = min(starts[-window:])
    if recent > (1 - min_shrink) * best_before:
        reason = (f"remaining data has not shrunk over the last {window} iterations "
                  f"(best {best_before / MIB:.1f} MiB before, {recent / MIB:.1f} MiB since)")
        return StallVerdict(True, reason, tuple(starts))
    return StallVerdict(False, "", tuple(starts))


def _round_starts(samples: Sequence[IterationSample]) -> list[float]:
    """Largest remaining seen per completed iteration ≥ 2, in iteration order."""
    if not samples:
        return []
    current = max(s.iteration for s in samples)
    peaks: dict[int, float] = {}
    for s in samples:
        if 2 <= s.iteration < current:
            peaks[s.iteration] = max(peaks.get(s.iteration, 0.0), float(s.remaining_bytes))
    return [peaks[i] for i in sorted(peaks)]



# --------------------------------------------------------------------------- the live tracker

STALL_CONFIRM_S = 2.0  # the model must call the pre-copy hopeless this long before a flag
STALL_MIN_SHRINK = 0.10  # … and the last round must not have shrunk the dirty set this much
ETA_CHECKPOINTS = (0.10, 0.25, 0.50, 0.75)  # shares of the elapsed time the record keeps


@dataclass(frozen=True)
class EtaPoint:
    """One displayed ETA: when, what the bar said was left, what the model said raw."""

    elapsed_s: float
    remaining_s: float  # displayed (monotone); inf while unknown
    raw_remaining_s: float
    holding: bool


@dataclass
class LiveEta:
    """The ETA the user sees and the stall flag, from each job-stats sample. Pure.

    The same object serves the progress bar and the migration record, so the ETA stored at
    10/25/50/75 % of the elapsed time is exactly what was shown. A stall is flagged
    `STALL_CONFIRM_S` after the live model first calls the pre-copy non-convergent at the
    measured rates (it can from the first sample of iteration 2, when QEMU first reports a
    dirty rate), once two completed dirty rounds show the set found at the latest sync not
    `STALL_MIN_SHRINK` smaller than the one before; or by `detect_stall` (no shrink over 3
    rounds), whichever comes first. So a stall is flagged within STALL_CONFIRM_S plus one
    sampling interval of both signs agreeing, and after 4 dirty rounds at worst. Why both
    signs: the model alone once called a 24 s migration that did converge hopeless.
    """

    inputs: MigrationInputs
    calibration: Calibration | None = None
    history: list[EtaPoint] = field(default_factory=list)
    predicted_s: float = math.nan
    stall_reason: str | None = None
    stall_flagged_s: float | None = None
    _state: EtaState | None = None
    _hopeless_since: float | None = None
    _samples: list[JobSample] = field(default_factory=list)

    def seed(self, predicted_total_s: float) -> None:
        """The pre-migration prediction (∞ when it predicted no convergence): what the
        display counts down from until round 0 starts."""
        self.predicted_s = predicted_total_s

    def update(self, sample: JobSample) -> EtaState:
        """Re-estimate from `sample`. A sample from before round 0 moves anything (libvirt
        reports iteration 0 and 0 bytes remaining while the destination starts) says nothing
        about the time left: read as "almost done", it pinned a monotone ETA at 0 s for a
        whole migration. Until round 0 starts the display counts down from the prediction
        plus libvirt's finish (`seed`), or shows "?" without a finite prediction."""
        self._samples.append(sample)
        if not started(sample):
            return self._hold(sample)
        estimate = estimate_remaining(sample, self.inputs, self.calibration)
        # the user waits for the command, not for QEMU's job: add libvirt's finish
        left = estimate.remaining_s + (self.calibration or DEFAULT_CALIBRATION).finish_s
        self._state = monotone_eta(self._state, sample.elapsed_s, left,
                                   estimate.uncertainty_s)
        self.history.append(EtaPoint(sample.elapsed_s, self._state.remaining_s, left,
                                     self._state.holding))
        if self.stall_reason is None:
            self._judge_stall(sample, estimate)
        return self._state

    def _judge_stall(self, sample: JobSample, estimate: RemainingEstimate) -> None:
        hopeless = not estimate.converges and sample.iteration >= 2
        if not hopeless:
            self._hopeless_since = None
        elif self._hopeless_since is None:
            self._hopeless_since = sample.elapsed_s
        starts = _round_starts(self._samples)
        stuck = len(starts) >= 2 and starts[-1] >= (1 - STALL_MIN_SHRINK) * starts[-2]
        if (self._hopeless_since is not None and stuck
                and sample.elapsed_s - self._hopeless_since >= STALL_CONFIRM_S):
            self.stall_reason = (f"the live model has called the pre-copy non-convergent for "
                                 f"{sample.elapsed_s - self._hopeless_since:.1f} s at the "
                                 f"measured dirty rate and bandwidth")
        else:
            verdict = detect_stall(self._samples)
            self.stall_reason = verdict.reason if verdict.stalled else None
        if self.stall_reason is not None:
            self.stall_flagged_s = sample.elapsed_s

    def _hold(self, sample: JobSample) -> EtaState:
        finish = (self.calibration or DEFAULT_CALIBRATION).finish_s
        end = self.predicted_s + finish if math.isfinite(self.predicted_s) else math.inf
        if self._state is not None and math.isfinite(self._state.end_s):
            end = self._state.end_s
        self._state = EtaState(sample.elapsed_s, max(end, sample.elapsed_s),
                               holding=not math.isfinite(end))
        self.history.append(EtaPoint(sample.elapsed_s, self._state.remaining_s, math.nan,
                                     self._state.holding))
        return self._state

    @property
    def state(self) -> EtaState | None:
        return self._state


def started(sample: JobSample) -> bool:
    """Has round 0 begun moving memory (a sample a time-left estimate can stand on)?"""
    return sample.iteration >= 1 and (sample.remaining_bytes > 0 or sample.processed_bytes > 0)


def eta_checkpoints(history: Sequence[EtaPoint], end_s: float,
                    shares: Sequence[float] = ETA_CHECKPOINTS) -> list[dict[str, float | None]]:
    """The ETA shown at each share of the elapsed time, against the time really left.

    The shown ETA at t is the last one displayed at or before t; its error is relative to
    the real remaining time end_s − t_shown (None while no ETA was known).
    """
    rows: list[dict[str, float | None]] = []
    for share in shares:
        at = share * end_s
        shown = [p for p in history if p.elapsed_s <= at]
        point = shown[-1] if shown else None
        actual = end_s - point.elapsed_s if point else None
        eta = point.remaining_s if point and math.isfinite(point.remaining_s) else None
        error = (100.0 * abs(eta - actual) / actual
                 if eta is not None and actual is not None and actual > 0 else None)
        rows.append({"share": share, "elapsed_s": point.elapsed_s if point else None,
                     "eta_s": eta, "actual_s": actual, "error_pct": error})
    return rows


def never_backwards(history: Sequence[EtaPoint], tolerance_s: float = 1e-9) -> bool:
    """True if the displayed time left never grew once it was known."""
    known = [p.remaining_s for p in history if math.isfinite(p.remaining_s)]
    return all(b <= a + tolerance_s for a, b in zip(known, known[1:], strict=False))


def eta_summary(live: LiveEta, end_s: float) -> dict[str, object]:
    """What a migration record keeps about its ETA: the checkpoints, whether the display
    ever ran backwards, and when a stall was flagged (s since the start)."""
    return {"checkpoints": eta_checkpoints(live.history, end_s),
            "never_backwards": never_backwards(live.history),
            "stall_flagged_s": live.stall_flagged_s, "samples": len(live.history),
            "stall_confirm_s": STALL_CONFIRM_S}
