"""Iterative pre-copy model of a QEMU live migration: Tmig = f(r_mig, r_dir, M, ς).

Why a model and not M ÷ r_mig: what a pre-copy migration sends is set by the guest's
non-zero memory and its writable working set, not by M (LAB-NOTES: an idle busybox guest
sends ~72 MB at 128 MiB and ~99 MB at 1024 MiB). The naive quotient overestimates such
migrations 2-10x, and it cannot say when a migration will never finish.

What QEMU does, and what this module mirrors (symbols used below):

    M   memory_bytes           B   bandwidth_bytes_s × η (η = calibration.bandwidth_efficiency)
    F   footprint (non-zero)   z   zero_page_wire_ratio (a zero page goes as a ~9 byte marker)
    W   writable working set   r   dirty rate in bytes/s = dirty_rate_pages_s × page_size
    ς   switch-over threshold = B × downtime_limit_s   (QEMU: threshold_size)

    round 0   sends the whole memory: s0 = F + z·(M − F) bytes,
              lasting t0 = s0 / B + scan_s_per_gib·(M − F)/GiB
    round i   sends what was dirtied during round i−1: s_i = min(W, r·t_{i−1}),
              t_i = s_i / B + c  (c = round_overhead_s: the dirty-bitmap sync and the loop's
              own cost, during which the guest keeps dirtying; large under TCG)
    switch    QEMU 7.2 (migration_iteration_run → ram_save_pending) checks once per 100 ms
              rate-limit slot whether `remaining` (dirty pages not yet sent, 4 KiB each,
              zero pages included) is below ς; only then does it sync the dirty bitmap, and
              it switches over if what is pending after the sync is still below ς. So a
              pass stops with a leftover ℓ unsent — ℓ = ς − min(ς, B·0.1 s)/2 on average —
              and the pause sends ℓ plus the dirty set d = min(W, r·t_last) found by the
              sync. The model switches when d ≤ ς (when ℓ + d ≥ ς QEMU runs one more short
              pass, folded into the last round here) and the stop-and-copy payload is
              p = d + ℓ, at most ς; the last round's live part is shorter by ℓ's wire
              bytes.
    pause     QEMU lifts the rate limit for the stop-and-copy (migration_completion), so p
              goes at link/CPU speed, not at B: downtime = min(k, 1/B)·p + o, with k =
              stop_copy_s_per_mib (never slower than B itself, so more bandwidth is never
              slower overall) and o = downtime_overhead_s (device state, pause/resume,
              announce), both fitted on measured downtimes
    total     Tmig = setup_s + Σ t_i (last one shortened by ℓ) + downtime
    never     when a later round dirties at least as much as it sent (r ≥ B and W > ς):
              the dirty set never shrinks, QEMU iterates until the caller's timeout action
              (abort, raise the downtime limit, post-copy) — `converges` is False. Also
              when r < B but the dirty set's floor s* = min(W, r·c / (1 − r/B)) (the fixed
              point of s ↦ r·(s/B + c)) is above ς: the rounds shrink towards s*, never to ς.

`iterations` follows libvirt/QEMU's counter (dirty-bitmap syncs), which is the number of
live rounds + 2: one sync at setup, one at the end of each round, one in the stop-and-copy.
LAB-NOTES saw 3 for an idle guest: round 0 then straight to switch-over.

Worked example (ideal calibration: setup 0, η = 1, z = 0, no fixed overheads, pause cost
k = 4 ms/MiB, i.e. 250 MiB/s uncapped), M = 1 GiB, bandwidth 100 MiB/s, downtime limit
0.3 s, so ς = 30 MiB and ℓ = 30 − 10/2 = 25 MiB; "live" is what each round sends while the
guest runs, p the stop-and-copy payload:

    case                          live rounds (MiB)            p (MiB)  downtime  Tmig     bytes
    idle (r = 0)                  999                          25       0.10 s    10.09 s  1024
    r = 50 MiB/s (half of B)      1024 512 256 128 64 18       30       0.12 s    20.14 s  2032
    r = 50 MiB/s, W = 64 MiB      1024 64 18                   30       0.12 s    11.18 s  1136
    r = 150 MiB/s, W = 16 MiB     1010                         30       0.12 s    10.22 s  1040
    r = 150 MiB/s, W = M          1024 1024 1024 ...           -        never     ∞        ∞

In the r = 50 MiB/s rows the last sync finds d = 16 MiB, so only 14 of the 25 MiB leftover
fit under ς: the last round sends 32 − 14 = 18 MiB live and the pause sends 16 + 14 = 30.
(r = 50 MiB/s is 12 800 pages/s of 4 KiB.) Everything is pure: numbers in, numbers out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Protocol

GIB = 1024**3
MIB = 1024**2
SYNCS_BEYOND_ROUNDS = 2  # NOTE: QEMU syncs the dirty bitmap at setup and in the stop-and-copy too
RATE_LIMIT_SLOT_S = 0.1  # QEMU's BUFFER_DELAY: the pending check runs once per 100 ms slot
MAX_ROUNDS = 10_000  # QEMU has no cap; a model that needs more rounds calls it non-convergent
CALIBRATION_SCHEMA = "edgeiot.calibration"
CALIBRATION_VERSION = 1


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class MigrationInputs:
    """What is known before a migration starts. Bytes, pages/s, bytes/s, seconds."""

    memory_bytes: int
    dirty_rate_pages_s: float
    bandwidth_bytes_s: float
    downtime_limit_s: float = 0.3
    working_set_bytes: int | None = None
    footprint_bytes: int | None = None
    page_size: int = 4096

    def __post_init__(self) -> None:
        _require(self.memory_bytes > 0, f"memory must be > 0 bytes, got {self.memory_bytes}")
        _require_finite("dirty rate", self.dirty_rate_pages_s)
        _require(self.dirty_rate_pages_s >= 0,
                 f"dirty rate must be >= 0 pages/s, got {self.dirty_rate_pages_s}")
        _require_finite("bandwidth", self.bandwidth_bytes_s)
        _require(self.bandwidth_bytes_s > 0,
                 f"bandwidth must be > 0 bytes/s, got {self.bandwidth_bytes_s}")
        _require_finite("downtime limit", self.downtime_limit_s)
        _require(self.downtime_limit_s > 0,
                 f"downtime limit must be > 0 s, got {self.downtime_limit_s}")
        _require(self.page_size > 0, f"page size must be > 0 bytes, got {self.page_size}")
        if self.working_set_bytes is not None:
            _require(0 <= self.working_set_bytes <= self.memory_bytes,
                     f"working set must be between 0 and memory ({self.memory_bytes} bytes), "
                     f"got {self.working_set_bytes}")
        if self.footprint_bytes is not None:
            _require(0 <= self.footprint_bytes <= self.memory_bytes,
                     f"footprint must be between 0 and memory ({self.memory_bytes} bytes), "
                     f"got {self.footprint_bytes}")

    @property
    def dirty_rate_bytes_s(self) -> float:
        return self.dirty_rate_pages_s * self.page_size

    @property
    def writable_bytes(self) -> int:
        """The writable working set; unknown means any page may be written."""
        return self.memory_bytes if self.working_set_bytes is None else self.working_set_bytes


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _require_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    """The model's few free parameters, fitted on real migrations (see model.calibration).

    Defaults come from LAB-NOTES (busybox guest under TCG, Debian 12): footprint
    F(M) ≈ 73 MB + 2.3 % of M fits the idle-guest measurements at 128-1024 MiB, and a
    20 MiB/s migration took ~1.09 × bytes ÷ bandwidth. Spreads are generous until fitted.
    """

    setup_s: float = 0.3  # before round 0 moves bytes: destination start, handshake
    bandwidth_efficiency: float = 0.95  # B = η × configured bandwidth (framing, TCP, pacing)
    zero_page_wire_ratio: float = 9 / 4096  # wire bytes per zero byte (8 B header + 1 B)
    zero_scan_s_per_gib: float = 0.0  # CPU time scanning zero pages in round 0 (TCG)
    footprint_base_bytes: float = 73e6  # default footprint when the guest's is unknown…
    footprint_fraction: float = 0.023  # … F = min(M, base + fraction × M)
    downtime_overhead_s: float = 0.02  # device state, pause/resume, announce
    stop_copy_s_per_mib: float = 0.004  # pause cost per MiB pending at the switch (uncapped)
    round_overhead_s: float = 0.0  # per live round after round 0: bitmap sync, loop cost
    time_rel_spread: float = 0.10  # ~90th percentile |relative residual| of Tmig
    time_abs_spread_s: float = 0.2  # residual floor for short migrations
    bytes_rel_spread: float = 0.10  # ~90th percentile |relative residual| of bytes
    downtime_abs_spread_s: float = 0.05  # ~90th percentile |residual| of downtime
    bandwidth_rel_sd: float = 0.05  # how much the achieved bandwidth wanders
    fitted_on: int = 0  # migrations the fit used; 0 means these are defaults
    source: str = "defaults (LAB-NOTES busybox guest)"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float | int) and not isinstance(value, bool):
                _require(math.isfinite(value) and value >= 0,
                         f"calibration {f.name} must be a finite number >= 0, got {value}")
        _require(0 < self.bandwidth_efficiency <= 2,
                 f"calibration bandwidth_efficiency must be in (0, 2], "
                 f"got {self.bandwidth_efficiency}")
        for name in ("zero_page_wire_ratio", "footprint_fraction"):
            _require(getattr(self, name) <= 1, f"calibration {name} must be <= 1")

    def footprint_for(self, inputs: MigrationInputs) -> float:
        """The guest's non-zero memory: measured if given, else the default model."""
        if inputs.footprint_bytes is not None:
            return float(inputs.footprint_bytes)
        guess = self.footprint_base_bytes + self.footprint_fraction * inputs.memory_bytes
        return float(min(inputs.memory_bytes, guess))

    def to_dict(self) -> dict[str, Any]:
        return {"schema": CALIBRATION_SCHEMA, "version": CALIBRATION_VERSION,
                "parameters": asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        """Versioned schema; missing parameters take defaults, unknown ones are refused."""
        _require(isinstance(data, dict), "calibration must be a JSON object")
        _require(data.get("schema") == CALIBRATION_SCHEMA,
                 f"not a calibration (schema {data.get('schema')!r}, "
                 f"expected {CALIBRATION_SCHEMA!r})")
        version = data.get("version")
        _require(version == CALIBRATION_VERSION,
                 f"unsupported calibration version {version!r} (this build reads "
                 f"{CALIBRATION_VERSION})")
        params = data.get("parameters")
        _require(isinstance(params, dict), "calibration has no 'parameters' object")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(params) - set(known))
        _require(not unknown, f"unknown calibration parameter(s): {', '.join(unknown)}")
        return cls(**{name: _coerce(name, value, known[name].type)
                      for name, value in params.items()})

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"calibration is not valid JSON: {exc.msg} at line {exc.lineno}")\
                from exc
        return cls.from_dict(data)


def _coerce(name: str, value: Any, type_name: Any) -> Any:
    """JSON numbers into the field's type, with a message naming the bad parameter."""
    if type_name in ("str", str):
        _require(isinstance(value, str), f"calibration {name} must be a string")
        return value
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    _require(ok, f"calibration {name} must be a number, got {value!r}")
    if type_name in ("int", int):
        _require(float(value).is_integer(), f"calibration {name} must be an integer")
        return int(value)
    return float(value)


DEFAULT_CALIBRATION = Calibration()


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Round:
    """One live pre-copy round (round 0 is the full-memory pass)."""

    index: int
    start_s: float  # since the migration started (after setup)
    duration_s: float
    sent_bytes: float
    dirtied_bytes: float  # dirty set at the end of the round: what the next step must send


@dataclass(frozen=True)
class Prediction:
    """A predicted migration. Times in s, bytes; inf when the migration never converges."""

    total_time_s: float
    transferred_bytes: float
    iterations: int  # libvirt's count (rounds + 2); a lower bound when never converging
    downtime_s: float  # if never converging: the pause a forced switch-over would cost
    converges: bool
    total_time_uncertainty_s: float
    transferred_bytes_uncertainty: float = 0.0
    downtime_uncertainty_s: float = 0.0
    rounds: tuple[Round, ...] = ()
    switchover_threshold_bytes: float = 0.0
    stop_copy_bytes: float = 0.0  # page data pending at the switch (sent during the pause)
    effective_bandwidth_bytes_s: float = 0.0
    footprint_bytes: float = 0.0
    reason: str = ""  # why it does not converge, and what QEMU would do then

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe: infinities become None."""
        data = asdict(self)
        data["rounds"] = [asdict(r) for r in self.rounds]
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in data.items()}


@dataclass(frozen=True)
class _Run:
    rounds: tuple[Round, ...]
    final_bytes: float  # page data pending at the switch; if never converging, the steady set
    converges: bool
    final_wire_bytes: float = 0.0  # what the stop-and-copy puts on the wire


def leftover_bytes(threshold: float, bandwidth: float, pass_bytes: float,
                   slot_s: float = RATE_LIMIT_SLOT_S) -> float:
    """Page data of a pass still unsent when QEMU first sees `remaining < ς` and syncs.

    QEMU checks once per rate-limit slot, each slot sending ~bandwidth × slot_s. A pass that
    starts within one slot of ς stops after that slot; a longer one crosses ς at a random
    phase of a slot, leaving ς − chunk/2 on average (ς/2 when a slot exceeds ς).
    """
    chunk = bandwidth * slot_s
    expected = threshold - min(threshold, chunk) / 2
    return max(0.0, min(expected, pass_bytes - chunk, pass_bytes))


def _simulate(first_bytes: float, first_extra_s: float, first_dirty_window_s: float | None,
              dirty_bps: float, bandwidth: float, writable: float, threshold: float,
              round_overhead_s: float = 0.0, first_pages: float | None = None) -> _Run:
    """Rounds until the dirty set fits ς, or until it cannot get there (never converges).

    `first_dirty_window_s` is how long the guest has been dirtying by the end of the first
    round (longer than its duration when a live estimate starts mid-round). `first_pages`
    is the first pass's page data (QEMU's `remaining` counts zero pages at 4 KiB) when it
    differs from its wire bytes. At the switch the last pass's leftover (see
    `leftover_bytes`) moves from the live round to the stop-and-copy.
    """
    floor = _dirty_floor(dirty_bps, bandwidth, writable, round_overhead_s)
    rounds: list[Round] = []
    send, start = first_bytes, 0.0
    duration = first_bytes / bandwidth + first_extra_s
    window = duration if first_dirty_window_s is None else first_dirty_window_s
    while True:
        dirtied = min(writable, dirty_bps * window)
        rounds.append(Round(len(rounds), start, duration, send, dirtied))
        if dirtied <= threshold:
            return _switch(rounds, dirtied, threshold, bandwidth, first_pages)
        if len(rounds) > 1 and dirtied >= send:
            # never shrinks again: it grows to W when r > B (stays put when r = B)
            steady = writable if dirty_bps > bandwidth else dirtied
            return _Run(tuple(rounds), steady, False, steady)
        if floor >= threshold:  # shrinks towards a floor above ς: never gets there
            return _Run(tuple(rounds), floor, False, floor)
        if len(rounds) >= MAX_ROUNDS:
            return _Run(tuple(rounds), dirtied, False, dirtied)
        start += duration
        send = dirtied
        duration = window = send / bandwidth + round_overhead_s


def _switch(rounds: list[Round], dirtied: float, threshold: float, bandwidth: float,
            first_pages: float | None) -> _Run:
    """The stop-and-copy payload: the dirty set found by the last sync plus the last pass's
    leftover, at most ς (QEMU switches only below it). After round 0 both are pages of the
    working set, so at most W too; that bound never binds here (a round after round 0
    means W > ς)."""
    last = rounds[-1]
    pages = last.sent_bytes if last.index or first_pages is None else max(first_pages,
                                                                          last.sent_bytes)
    wire_per_page = last.sent_bytes / pages if pages > 0 else 1.0
    left = min(leftover_bytes(threshold, bandwidth, pages), max(0.0, threshold - dirtied))
    left_wire = left * wire_per_page
    rounds[-1] = replace(last, duration_s=last.duration_s - left_wire / bandwidth,
                         sent_bytes=last.sent_bytes - left_wire)
    return _Run(tuple(rounds), dirtied + left, True, dirtied + left_wire)


def _dirty_floor(dirty_bps: float, bandwidth: float, writable: float, overhead_s: float) -> float:
    """The fixed point s* of s ↦ min(W, r·(s/B + c)) when r < B; 0 without overhead."""
    if overhead_s <= 0 or dirty_bps <= 0 or dirty_bps >= bandwidth:
        return 0.0
    return min(writable, dirty_bps * overhead_s / (1 - dirty_bps / bandwidth))


def _run_for(inputs: MigrationInputs, cal: Calibration, bandwidth_scale: float = 1.0) -> _Run:
    bandwidth = inputs.bandwidth_bytes_s * cal.bandwidth_efficiency * bandwidth_scale
    footprint = cal.footprint_for(inputs)
    zero_bytes = inputs.memory_bytes - footprint
    first = footprint + cal.zero_page_wire_ratio * zero_bytes
    scan_s = cal.zero_scan_s_per_gib * zero_bytes / GIB
    return _simulate(first, scan_s, None, inputs.dirty_rate_bytes_s, bandwidth,
                     float(inputs.writable_bytes), bandwidth * inputs.downtime_limit_s,
                     cal.round_overhead_s, first_pages=float(inputs.memory_bytes))


def _downtime(pending_bytes: float, cal: Calibration, bandwidth: float) -> float:
    """The pause: QEMU lifts the rate limit for the stop-and-copy (migration_completion),
    so the pending pages go at link/CPU speed — never slower than the capped B itself."""
    per_mib = min(cal.stop_copy_s_per_mib, MIB / bandwidth)
    return cal.downtime_overhead_s + per_mib * pending_bytes / MIB


def _total_time(run: _Run, cal: Calibration, bandwidth: float) -> float:
    if not run.converges:
        return math.inf
    live = sum(r.duration_s for r in run.rounds)
    return cal.setup_s + live + _downtime(run.final_bytes, cal, bandwidth)


def predict(inputs: MigrationInputs, calibration: Calibration | None = None, *,
            with_uncertainty: bool = True) -> Prediction:
    """Predict one migration; see the module docstring for the equations and a table.

    `with_uncertainty=False` skips the two extra model runs of the bandwidth swing (the
    fit calls the model thousands of times); the uncertainty is then the residual part only.
    """
    cal = calibration or DEFAULT_CALIBRATION
    bandwidth = inputs.bandwidth_bytes_s * cal.bandwidth_efficiency
    run = _run_for(inputs, cal)
    total = _total_time(run, cal, bandwidth)
    downtime = _downtime(run.final_bytes, cal, bandwidth)
    sent = sum(r.sent_bytes for r in run.rounds) + run.final_wire_bytes
    transferred = sent if run.converges else math.inf
    return Prediction(
        total_time_s=total,
        transferred_bytes=transferred,
        iterations=len(run.rounds) + SYNCS_BEYOND_ROUNDS,
        downtime_s=downtime,
        converges=run.converges,
        total_time_uncertainty_s=_time_uncertainty(inputs, cal, total, with_uncertainty),
        transferred_bytes_uncertainty=cal.bytes_rel_spread * transferred,
        downtime_uncertainty_s=cal.downtime_abs_spread_s,
        rounds=run.rounds,
        switchover_threshold_bytes=bandwidth * inputs.downtime_limit_s,
        stop_copy_bytes=run.final_bytes,
        effective_bandwidth_bytes_s=bandwidth,
        footprint_bytes=cal.footprint_for(inputs),
        reason="" if run.converges else _non_convergence_reason(inputs, run, bandwidth, cal),
    )


def _time_uncertainty(inputs: MigrationInputs, cal: Calibration, total: float,
                      with_swing: bool = True) -> float:
    """Residual spread of the fit plus the swing from a bandwidth off by ±bandwidth_rel_sd.

    The swing matters near the convergence edge, where a few percent of bandwidth decide
    between a handful of rounds and never finishing: there the uncertainty becomes ∞.
    """
    if not math.isfinite(total):
        return math.inf
    residual = cal.time_rel_spread * total + cal.time_abs_spread_s
    if not with_swing:
        return residual
    times = []
    for scale in (1 - cal.bandwidth_rel_sd, 1 + cal.bandwidth_rel_sd):
        bandwidth = inputs.bandwidth_bytes_s * cal.bandwidth_efficiency * scale
        times.append(_total_time(_run_for(inputs, cal, scale), cal, bandwidth))
    return residual + (max(times) - min(times)) / 2


def _non_convergence_reason(inputs: MigrationInputs, run: _Run, bandwidth: float,
                            cal: Calibration) -> str:
    rate, steady = inputs.dirty_rate_bytes_s, run.final_bytes
    threshold = bandwidth * inputs.downtime_limit_s
    if len(run.rounds) >= MAX_ROUNDS:
        cause = f"the dirty set still exceeds the threshold after {MAX_ROUNDS} rounds"
    elif rate < bandwidth:
        cause = (f"dirty rate {rate / MIB:.1f} MiB/s below effective bandwidth "
                 f"{bandwidth / MIB:.1f} MiB/s, but each round's fixed cost "
                 f"({cal.round_overhead_s * 1000:.0f} ms) keeps ~{steady / MIB:.1f} MiB dirty, "
                 f"above the switch-over threshold ({threshold / MIB:.1f} MiB)")
    else:
        cause = (f"dirty rate {rate / MIB:.1f} MiB/s >= effective bandwidth "
                 f"{bandwidth / MIB:.1f} MiB/s and the writable working set "
                 f"({inputs.writable_bytes / MIB:.0f} MiB) exceeds the switch-over threshold "
                 f"({threshold / MIB:.1f} MiB)")
    return (f"will not converge: {cause}; QEMU would keep iterating, resending "
            f"~{steady / MIB:.0f} MiB every {steady / bandwidth:.1f} s, until the migration "
            f"timeout action fires (abort, raise the downtime limit, or post-copy); "
            f"forcing the switch-over would pause the guest "
            f"~{_downtime(steady, cal, bandwidth):.1f} s")


def naive_time_s(inputs: MigrationInputs) -> float:
    """The baseline every published model beats: M ÷ r_mig."""
    return inputs.memory_bytes / inputs.bandwidth_bytes_s


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
    """Time left from a live sample: finish this round, then the model from here on.

    Live measurements win over the plan: the sample's bandwidth (memory_bps) is already an
    achieved rate, so no efficiency factor applies; its dirty rate replaces the planned one
    once QEMU reports it. In round 0, QEMU's `remaining` still counts unvisited zero pages,
    so the wire bytes left are the planned round-0 bytes not yet processed.
    """
    cal = calibration or DEFAULT_CALIBRATION
    bandwidth = (sample.bandwidth_bytes_s if sample.bandwidth_bytes_s > 0
                 else inputs.bandwidth_bytes_s * cal.bandwidth_efficiency)
    rate_pages = (sample.dirty_rate_pages_s if sample.iteration >= 2
                  and sample.dirty_rate_pages_s > 0 else inputs.dirty_rate_pages_s)
    left = _wire_bytes_left(sample, inputs, cal)
    this_round_s = left / bandwidth
    window = this_round_s + (sample.round_elapsed_s or 0.0)
    run = _simulate(left, 0.0, window, rate_pages * inputs.page_size, bandwidth,
                    float(inputs.writable_bytes), bandwidth * inputs.downtime_limit_s,
                    cal.round_overhead_s,
                    first_pages=max(left, float(sample.remaining_bytes)))
    downtime = _downtime(run.final_bytes, cal, bandwidth)
    if not run.converges:
        return RemainingEstimate(math.inf, False, len(run.rounds), downtime, math.inf)
    remaining = sum(r.duration_s for r in run.rounds) + downtime
    spread = cal.time_rel_spread * remaining + cal.downtime_abs_spread_s
    return RemainingEstimate(remaining, True, len(run.rounds), downtime, spread)


def _wire_bytes_left(sample: JobSample, inputs: MigrationInputs, cal: Calibration) -> float:
    remaining = max(0.0, sample.remaining_bytes)
    if sample.iteration >= 2:
        return remaining
    footprint = cal.footprint_for(inputs)
    planned = footprint + cal.zero_page_wire_ratio * (inputs.memory_bytes - footprint)
    floor = cal.zero_page_wire_ratio * remaining  # even an all-zero rest costs its markers
    return min(remaining, max(planned - sample.processed_bytes, floor))


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
    The first estimate is shown as is; seed it with the pre-migration prediction
    (`predict(...).total_time_s`), since an infinite first estimate has nothing to hold and
    shows 0 s left with `holding` set. Later infinite estimates (no convergence) hold.
    """
    raw_end = elapsed_s + max(0.0, raw_remaining_s)
    if previous is None:
        return EtaState(elapsed_s, raw_end if math.isfinite(raw_end) else elapsed_s,
                        holding=not math.isfinite(raw_end))
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
