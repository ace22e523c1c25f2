"""Iterative pre-copy model of a QEMU live migration: Tmig = f(r_mig, r_dir, M, ς).

Why a model and not M ÷ r_mig: what a pre-copy migration sends is set by the guest's
non-zero memory and its writable working set, not by M (LAB-NOTES: an idle busybox guest
sends ~72 MB at 128 MiB and ~99 MB at 1024 MiB). The naive quotient overestimates such
migrations 2-10x, and it cannot say when a migration will never finish.

What QEMU 7.2 does, and what this module mirrors (symbols used below):

    M   memory_bytes           B   bandwidth_bytes_s × η (η = calibration.bandwidth_efficiency)
    F   footprint (non-zero)   z   zero_page_wire_ratio (a zero page goes as a ~9 byte marker)
    W   writable working set   r   dirty rate in bytes/s = dirty_rate_pages_s × page_size
    H   hot_set_bytes          c   round_overhead_s (the dirty-bitmap sync's cost)
    k   stop_copy_s_per_mib    σ   zero_scan_s_per_gib (CPU time per zero byte)
    R   the achieved data rate min(B, 1/k): the cap, unless the CPU is slower
    ς   switch-over threshold = R × downtime_limit_s  (QEMU: threshold_size, from the bytes
        the stream moved in its last 100 ms slot, i.e. the achieved rate)
    χ   what one 100 ms rate-limit slot sends = R × 0.1 s

    pages     moving pages costs CPU: cpu = k·wire + σ·zero, wire the bytes on the stream
              (4 KiB a data page, z·4 KiB a zero page). Live, the cap counts wire bytes
              only: QEMU's thread sends a slot's quota, then sleeps to the end of the 100 ms
              slot (migration_rate_limit), and zero pages (buffer_is_zero, a ~9-byte
              marker) are scanned in time it would sleep anyway. So a pass costs
              max(wire/B, cpu): the CPU shows only when it, not the cap, is the bottleneck.
              The uncapped pause costs cpu. Hence moving a page from the last pass into the
              pause never makes a migration slower.
    passes    round 0 sends all M pages (F of them data). QEMU checks `remaining` (pending
              pages, zero pages included) once per slot, and only when it is below ς does
              it sync the dirty bitmap: a pass ends with ℓ = ς − min(ς, χ_p)/2 unsent on
              average (none when it fits one slot), χ_p the pages a slot gets through
              (χ of wire; far more pages where they are zero). The next pass starts with
              round 0's unsent tail, just ahead of QEMU's cursor. A pass lasts
              max(wire/B, cpu) of that tail, plus max(wire/B, cpu) of its dirty pages (the
              cursor crosses one, then the other), plus c.
    sync      finds d = min(W, r·t) + H new dirty pages, t the time since the previous
              sync: the cyclic writer's pages plus the hot set H that any guest rewrites
              every round however short (kernel stacks, timers, the agent; with pti=on
              under TCG each user/kernel switch re-arms dirty tracking). Pending after it:
              P = ℓ + d, never more than ℓ's round-0 tail + W + H.
    switch    when P ≤ ς (migration_iteration_run); the pause sends P. Otherwise the next
              pass sends P − ℓ'.
    pause     QEMU lifts the rate limit for the stop-and-copy (migration_completion):
              downtime = o + k·wire(P) + σ·zero(P), o = downtime_overhead_s (device state,
              and libvirt's pause-to-resume handshake, which its downtime figure includes)
    total     Tmig = setup_s + Σ passes + downtime
    never     the smallest set a sync can find is d* = min(W + H, (H + r·c) / (1 − r/R))
              (the fixed point of d ↦ r·(d/R + c) + H; W + H when r ≥ R). Once P > ς,
              with W + H > ς: if χ ≥ ς a pass sends everything, so the next P ≥ d*; if
              χ < ς each pass keeps ≥ ς − χ unsent, so P only shrinks when a sync finds
              less than one slot's χ. Hence the migration never converges when
              d* ≥ min(ς, χ): a dirty rate close to R, or a small ς, stalls below R.
              QEMU then iterates until the caller's timeout action (abort, raise the
              downtime limit, post-copy) — `converges` is False.

`iterations` follows libvirt/QEMU's counter (dirty-bitmap syncs), which is the number of
passes + 2: one sync at setup, one at the end of each pass, one in the stop-and-copy.
LAB-NOTES saw 3 for an idle guest: round 0 then straight to switch-over.

Worked example (ideal calibration: setup 0, η = 1, z = 0, σ = 0, c = 0, H = 0, o = 0,
pause cost k = 4 ms/MiB, i.e. 250 MiB/s uncapped), M = F = 1 GiB, bandwidth 100 MiB/s,
downtime limit 0.3 s, so ς = 30 MiB, χ = 10 MiB and ℓ = min(25 MiB, pass − 10 MiB):

    case                        passes (MiB)                           P (MiB)  Tmig      bytes
    idle (r = 0)                999                                    25       10.09 s   1024
    r = 50 MiB/s (half of B)    999 499.5 249.75 124.875 62.4375       27.80    20.035 s  2020.2
                                31.21875 15.609375 10
    r = 50 MiB/s, W = 64 MiB    999 64 32 16 10                        28       11.322 s  1149
    r = 150 MiB/s, W = 16 MiB   999 35                                 16       10.404 s  1050
    r = 150 MiB/s, W = M        999, then W again and again            -        never     ∞

Half bandwidth: round 0 leaves ℓ = 25 MiB and the sync finds 50 × 9.99 = 499.5 MiB, so
P = 524.5 and pass 1 sends 499.5; each pass halves until P = 25 + 15.609 = 40.6, then
25 + 7.805 = 32.8 > ς: that pass keeps only 32.8 − 10 = 22.8 MiB, sends one slot (0.1 s),
and the sync finds 5 MiB: P = 27.8 ≤ ς, a 0.111 s pause. W = 16 MiB beyond B converges
because W ≤ ς: the pass after round 0 sends round 0's 25 MiB tail and all of W but
ℓ = 16 − 10 = 6 MiB, and the sync finds W rewritten: P = 6 + 16 capped by W, 16 MiB.
W = M beyond B: the sync after round 0 finds d* = W > ς, never.
(r = 50 MiB/s is 12 800 pages/s of 4 KiB.) Everything is pure: numbers in, numbers out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.model.calfile import (
    CALIBRATION_SCHEMA,
    CALIBRATION_VERSION,
    DEFAULT_CALIBRATION,
    GIB,
    MIB,
    Calibration,
    MigrationInputs,
)

__all__ = [
    "CALIBRATION_SCHEMA", "CALIBRATION_VERSION", "DEFAULT_CALIBRATION", "GIB", "MIB",
    "MAX_ROUNDS", "RATE_LIMIT_SLOT_S", "SYNCS_BEYOND_ROUNDS", "Calibration", "MigrationInputs",
    "Prediction", "Round", "leftover_bytes", "naive_time_s", "predict",
]

SYNCS_BEYOND_ROUNDS = 2  # NOTE: QEMU syncs the dirty bitmap at setup and in the stop-and-copy too
RATE_LIMIT_SLOT_S = 0.1  # QEMU's BUFFER_DELAY: the pending check runs once per 100 ms slot
MAX_ROUNDS = 10_000  # QEMU has no cap; a model that needs more rounds calls it non-convergent
# A measurement that saw (nearly) all of W is read as 99 % of it: page sampling cannot tell
# "all of W once" from "all of W many times" (512 sampled pages per GiB).
MAX_SEEN_SHARE = 0.99
FLOOR_ITERATIONS = 500


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Round:
    """One live pre-copy pass, ended by a dirty-bitmap sync (round 0: the full memory)."""

    index: int
    start_s: float  # since the migration started (after setup)
    duration_s: float
    sent_bytes: float  # wire bytes this pass put on the stream
    dirtied_bytes: float  # new dirty pages the sync at its end found (min(W, r·t) + H)


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
    stop_copy_bytes: float = 0.0  # pages pending at the switch (QEMU's `remaining`)
    effective_bandwidth_bytes_s: float = 0.0  # R: the cap × η, or the CPU's 1/k if slower
    footprint_bytes: float = 0.0
    reason: str = ""  # why it does not converge, and what QEMU would do then
    stop_copy_wire_bytes: float = 0.0  # what the pause puts on the wire (zero pages ~0)
    stop_copy_zero_bytes: float = 0.0  # zero pages among the pending ones (scanned, not sent)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe: infinities become None."""
        data = asdict(self)
        data["rounds"] = [asdict(r) for r in self.rounds]
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in data.items()}


@dataclass(frozen=True)
class _Pages:
    """Pages QEMU still has to send: round 0's unvisited tail (non-zero share `share` of the
    guest's pages) and dirty pages (always non-zero). Page bytes, as `remaining` counts."""

    tail: float = 0.0
    data: float = 0.0

    @property
    def pages(self) -> float:
        return self.tail + self.data


@dataclass(frozen=True)
class _Link:
    """What moving pages costs: wire bytes against the cap, CPU for every page.

    Why a maximum and not a sum: under a cap QEMU's migration thread sends a slot's quota
    and then sleeps to the end of its 100 ms slot (migration_rate_limit); a zero page costs
    CPU (buffer_is_zero) but only a ~9-byte marker of quota, so scanning zero pages fills
    time the thread would sleep anyway. The CPU sets the pace only where a pass's CPU work
    exceeds its wire time. The pause is uncapped: its CPU (and link) work is all it costs.
    """

    bandwidth: float  # B, bytes/s: the cap, as achieved on the wire
    limit_s: float  # the downtime limit
    share: float  # non-zero share of the tail's pages (F / M for round 0)
    wire_ratio: float  # z: wire bytes per zero byte
    data_s_per_byte: float  # k: CPU and uncapped-link time per wire byte
    scan_s_per_byte: float  # σ: CPU time per zero byte
    sync_s: float  # c: what each dirty-bitmap sync costs (the guest keeps dirtying)

    @property
    def data_rate(self) -> float:
        """Wire bytes/s a pass of data pages achieves: the cap, or 1/k if the CPU is slower."""
        k = self.data_s_per_byte
        return min(self.bandwidth, 1 / k) if k > 0 else self.bandwidth

    @property
    def threshold(self) -> float:
        """ς: QEMU's threshold_size is the rate its stream achieved times the limit."""
        return self.data_rate * self.limit_s

    @property
    def chunk(self) -> float:
        """What one 100 ms rate-limit slot sends: QEMU checks `remaining` once per slot."""
        return self.data_rate * RATE_LIMIT_SLOT_S

    def wire(self, p: _Pages) -> float:
        return p.tail * (self.share + self.wire_ratio * (1 - self.share)) + p.data

    def zero(self, p: _Pages) -> float:
        return p.tail * (1 - self.share)

    def cpu_s(self, p: _Pages) -> float:
        """CPU time to move `p`: k per wire byte, σ per zero byte."""
        return self.data_s_per_byte * self.wire(p) + self.scan_s_per_byte * self.zero(p)

    def transfer_s(self, p: _Pages) -> float:
        """Time to move `p` live: max(wire/B, CPU time) for round 0's tail and for the dirty
        pages apart. QEMU's cursor crosses them one after the other, so the tail's zero
        pages cannot hide behind the dirty pages' quota."""
        tail = _Pages(tail=p.tail)
        return (max(self.wire(tail) / self.bandwidth, self.cpu_s(tail))
                + p.data * max(1 / self.bandwidth, self.data_s_per_byte))

    def slot_pages(self, p: _Pages) -> float:
        """Page bytes of `p` one 100 ms slot gets through. The rate limit counts wire bytes,
        so a slot covers many zero pages, as many as its CPU time allows."""
        cost = self.transfer_s(p)
        return RATE_LIMIT_SLOT_S * p.pages / cost if cost > 0 else math.inf

    def pause_s(self, p: _Pages) -> float:
        """The pause's payload part (without the fixed overhead o): its CPU time. Never
        above `transfer_s`, so moving a page from the last pass into the pause never costs
        time."""
        return self.cpu_s(p)


@dataclass(frozen=True)
class _Guest:
    dirty_bps: float  # r
    writable: float  # W
    hot: float  # H
    measured_over_s: float | None = None  # T: r is distinct pages over T (a measurement)

    def dirtied(self, window_s: float) -> float:
        """New dirty pages at a sync `window_s` after the previous one, plus the hot set,
        which any round rewrites however short it is.

        A write rate r (no T): the cyclic writer's min(W, r·t). A measured rate (distinct
        pages D = r·T seen over T): the set grows like a writer hitting pages of W at
        random, W·(1 − e^(−λt)) with λ fitted through D at T. Why: the family is unknown
        before a migration, and this curve is exact for uniform writers, within ~6 % of a
        sweep (below T), and reads a saturated measurement (D ≈ W: a fast writer on a
        small set, which the linear reading underestimates 4-fold) as the set rewritten
        well within a round.
        """
        if self.measured_over_s is None:
            return min(self.writable, self.dirty_bps * window_s) + self.hot
        return self.writable * -math.expm1(-self._lambda() * window_s) + self.hot

    def _lambda(self) -> float:
        if self.writable <= 0 or self.measured_over_s is None:
            return 0.0
        seen = min(self.dirty_bps * self.measured_over_s / self.writable, MAX_SEEN_SHARE)
        return -math.log1p(-seen) / self.measured_over_s

    @property
    def bound(self) -> float:
        """After round 0 the pending set is a subset of W ∪ hot: it can never be larger."""
        return self.writable + self.hot


@dataclass(frozen=True)
class _Run:
    rounds: tuple[Round, ...]
    payload: _Pages  # pending at the switch; if never converging, the steady dirty set
    converges: bool


def leftover_bytes(threshold: float, bandwidth: float, pass_bytes: float,
                   slot_s: float = RATE_LIMIT_SLOT_S) -> float:
    """Page data of a pass still unsent when QEMU first sees `remaining < ς` and syncs.

    QEMU checks once per rate-limit slot, each slot getting through ~bandwidth × slot_s of
    pages (`bandwidth` in page bytes/s). A pass that fits in one slot is sent whole; a
    longer one crosses ς at a random phase of a slot, leaving ς − chunk/2 on average (ς/2
    when a slot exceeds ς).
    """
    chunk = bandwidth * slot_s
    expected = threshold - min(threshold, chunk) / 2
    return max(0.0, min(expected, pass_bytes - chunk, pass_bytes))


def _simulate(first: _Pages, link: _Link, guest: _Guest, elapsed_s: float = 0.0) -> _Run:
    """Passes and syncs until the pending pages fit ς (QEMU 7.2's switch rule), or until
    they provably never will. `first` is the pass under way; `elapsed_s` how long it has
    already been running (the guest has been dirtying since its sync)."""
    rounds: list[Round] = []
    pending, start = first, 0.0
    floor = _dirty_floor(guest, link)
    while True:
        sent, kept = _split(pending, link)
        duration = link.transfer_s(sent) + link.sync_s
        dirtied = guest.dirtied(duration + (elapsed_s if not rounds else 0.0))
        rounds.append(Round(len(rounds), start, duration, link.wire(sent), dirtied))
        pending = _Pages(kept.tail, min(max(guest.bound, kept.data), kept.data + dirtied))
        if pending.pages <= link.threshold:
            return _Run(tuple(rounds), pending, True)
        if floor >= min(link.threshold, link.chunk):
            return _Run(tuple(rounds), _Pages(data=floor), False)
        if len(rounds) >= MAX_ROUNDS:
            return _Run(tuple(rounds), pending, False)
        start += duration


def _split(pending: _Pages, link: _Link) -> tuple[_Pages, _Pages]:
    """(sent, kept): what a pass sends, and what it leaves pending when QEMU syncs.

    Round 0's unsent tail lies just ahead of QEMU's cursor, so the next pass starts with
    it and sends it whole; what stays is dirty pages, by `leftover_bytes` over them. A
    pass of tail only (round 0) keeps part of the tail. Why the tail is never split with
    dirty pages: a left-over tail page is not rewritten like a dirty one, so letting the
    mix decide what stays would make more dirtying finish sooner in the model (in QEMU,
    whose cursor keeps moving, it never does).
    """
    part = _Pages(data=pending.data) if pending.data > 0 else pending
    rate = link.slot_pages(part) / RATE_LIMIT_SLOT_S
    keep = leftover_bytes(link.threshold, rate, part.pages)
    kept = _Pages(data=keep) if pending.data > 0 else _Pages(tail=keep)
    return _Pages(pending.tail - kept.tail, pending.data - kept.data), kept


def _dirty_floor(guest: _Guest, link: _Link) -> float:
    """The least dirty set a sync can find, d* = min(W + H, (H + r·c) / (1 − r/R)): the
    fixed point of d ↦ r·(d/R + c) + H, or W + H when r ≥ R (R: the achieved data rate).

    Why it decides convergence (once the pending set exceeds ς and W + H > ς): with one
    slot's chunk ≥ ς a pass sends everything and the next sync finds ≥ d*, so d* ≥ ς never
    switches; with chunk < ς each pass ends with ≥ ς − chunk unsent, so the pending set only
    shrinks if a sync finds less than one chunk: d* ≥ chunk never switches either.
    """
    if guest.bound <= link.threshold:
        return 0.0  # the pending set is bounded below ς: it always gets there
    if guest.measured_over_s is not None:
        return _saturating_floor(guest, link)
    if guest.dirty_bps >= link.data_rate:
        return guest.bound
    fixed = (guest.hot + guest.dirty_bps * link.sync_s) / (1 - guest.dirty_bps / link.data_rate)
    return min(guest.bound, fixed)


def _saturating_floor(guest: _Guest, link: _Link) -> float:
    """The least fixed point of d ↦ g(d/R + c) + H for the saturating growth g: iterate up
    from 0 (g is increasing, so the iterates rise to the least fixed point, never past it)."""
    d = 0.0
    for _ in range(FLOOR_ITERATIONS):
        nxt = min(guest.bound, guest.dirtied(d / link.data_rate + link.sync_s))
        if nxt - d <= 1e-9 * max(1.0, guest.bound):
            return nxt
        d = nxt
    return d


def _link_for(inputs: MigrationInputs, cal: Calibration, bandwidth: float,
              share: float) -> _Link:
    return _Link(bandwidth=bandwidth, limit_s=inputs.downtime_limit_s, share=share,
                 wire_ratio=cal.zero_page_wire_ratio,
                 data_s_per_byte=cal.stop_copy_s_per_mib / MIB,
                 scan_s_per_byte=cal.zero_scan_s_per_gib / GIB, sync_s=cal.round_overhead_s)


def _guest_for(inputs: MigrationInputs, cal: Calibration, dirty_bps: float,
               measured: bool = True) -> _Guest:
    """`measured=False`: `dirty_bps` is not the inputs' hypervisor reading (e.g. QEMU's own
    per-round rate during a migration), so it grows linearly."""
    memory = float(inputs.memory_bytes)
    return _Guest(dirty_bps, float(inputs.writable_bytes), min(cal.hot_set_bytes, memory),
                  inputs.dirty_window_s if measured else None)


def _run_for(inputs: MigrationInputs, cal: Calibration,
             bandwidth_scale: float = 1.0) -> tuple[_Run, _Link]:
    bandwidth = inputs.bandwidth_bytes_s * cal.bandwidth_efficiency * bandwidth_scale
    share = cal.footprint_for(inputs) / inputs.memory_bytes
    link = _link_for(inputs, cal, bandwidth, share)
    guest = _guest_for(inputs, cal, inputs.dirty_rate_bytes_s)
    return _simulate(_Pages(tail=float(inputs.memory_bytes)), link, guest), link


def _downtime(run: _Run, link: _Link, cal: Calibration) -> float:
    """The pause: o + k·wire + σ·zero. QEMU lifts the rate limit for the stop-and-copy
    (migration_completion), so its pages go at CPU (and uncapped link) speed."""
    return cal.downtime_overhead_s + link.pause_s(run.payload)


def _total_time(run: _Run, link: _Link, cal: Calibration) -> float:
    if not run.converges:
        return math.inf
    live = sum(r.duration_s for r in run.rounds)
    return cal.setup_s + live + _downtime(run, link, cal)


def predict(inputs: MigrationInputs, calibration: Calibration | None = None, *,
            with_uncertainty: bool = True) -> Prediction:
    """Predict one migration; see the module docstring for the equations and a table.

    `with_uncertainty=False` skips the two extra model runs of the bandwidth swing (the
    fit calls the model thousands of times); the uncertainty is then the residual part only.
    """
    cal = calibration or DEFAULT_CALIBRATION
    run, link = _run_for(inputs, cal)
    total = _total_time(run, link, cal)
    sent = sum(r.sent_bytes for r in run.rounds) + link.wire(run.payload)
    transferred = sent if run.converges else math.inf
    return Prediction(
        total_time_s=total,
        transferred_bytes=transferred,
        iterations=len(run.rounds) + SYNCS_BEYOND_ROUNDS,
        downtime_s=_downtime(run, link, cal),
        converges=run.converges,
        total_time_uncertainty_s=_time_uncertainty(inputs, cal, total, with_uncertainty),
        transferred_bytes_uncertainty=cal.bytes_rel_spread * transferred,
        downtime_uncertainty_s=cal.downtime_abs_spread_s,
        rounds=run.rounds,
        switchover_threshold_bytes=link.threshold,
        stop_copy_bytes=run.payload.pages,
        effective_bandwidth_bytes_s=link.data_rate,
        footprint_bytes=cal.footprint_for(inputs),
        reason="" if run.converges else _non_convergence_reason(inputs, run, link, cal),
        stop_copy_wire_bytes=link.wire(run.payload),
        stop_copy_zero_bytes=link.zero(run.payload),
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
    times = [_total_time(*_run_for(inputs, cal, scale), cal)
             for scale in (1 - cal.bandwidth_rel_sd, 1 + cal.bandwidth_rel_sd)]
    return residual + (max(times) - min(times)) / 2


def _non_convergence_reason(inputs: MigrationInputs, run: _Run, link: _Link,
                            cal: Calibration) -> str:
    rate, steady, bandwidth = inputs.dirty_rate_bytes_s, run.payload.pages, link.data_rate
    if len(run.rounds) >= MAX_ROUNDS:
        cause = f"the pending pages still exceed the threshold after {MAX_ROUNDS} rounds"
    elif rate < bandwidth:
        cause = (f"dirty rate {rate / MIB:.1f} MiB/s below effective bandwidth "
                 f"{bandwidth / MIB:.1f} MiB/s, but every sync finds ≥ {steady / MIB:.2f} MiB "
                 f"dirty (the guest's {cal.hot_set_bytes / MIB:.2f} MiB hot set plus what it "
                 f"writes in a pass and its {cal.round_overhead_s * 1000:.0f} ms sync), not "
                 f"less than the {min(link.threshold, link.chunk) / MIB:.2f} MiB a switch-over "
                 f"needs (threshold {link.threshold / MIB:.2f} MiB, one "
                 f"{RATE_LIMIT_SLOT_S * 1000:.0f} ms slot {link.chunk / MIB:.2f} MiB)")
    else:
        cause = (f"dirty rate {rate / MIB:.1f} MiB/s >= effective bandwidth "
                 f"{bandwidth / MIB:.1f} MiB/s and the writable working set "
                 f"({inputs.writable_bytes / MIB:.0f} MiB) exceeds the switch-over threshold "
                 f"({link.threshold / MIB:.1f} MiB)")
    return (f"will not converge: {cause}; QEMU would keep iterating, resending "
            f"~{steady / MIB:.1f} MiB every {steady / bandwidth:.2f} s, until the migration "
            f"timeout action fires (abort, raise the downtime limit, or post-copy); "
            f"forcing the switch-over would pause the guest "
            f"~{_downtime(run, link, cal) * 1000:.0f} ms")


def naive_time_s(inputs: MigrationInputs) -> float:
    """The baseline every published model beats: M ÷ r_mig."""
    return inputs.memory_bytes / inputs.bandwidth_bytes_s



_MOVED_TO_LIVE = frozenset({"JobSample", "RemainingEstimate", "estimate_remaining", "EtaState",
                            "monotone_eta", "monotone_series", "IterationSample",
                            "StallVerdict", "detect_stall"})


def __getattr__(name: str) -> Any:
    """The live estimates moved to `model.live`; old imports from here keep working.

    Why lazily: `live` imports this module, so importing it back at load time would be a
    cycle. New code imports from `orchestrator.model.live`.
    """
    if name in _MOVED_TO_LIVE:
        from orchestrator.model import live
        return getattr(live, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
