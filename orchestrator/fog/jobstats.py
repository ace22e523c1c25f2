"""libvirt job statistics as plain data, and the final figures of a migration.

Pure: takes the dict `virDomain.jobStats()` returns, gives back typed samples. Field names
follow libvirt's typed parameters (VIR_DOMAIN_JOB_*). The dirty rate shows from the second
pre-copy iteration on; before that it is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.model.live import JobSample as LiveSample

JOB_NONE = 0  # VIR_DOMAIN_JOB_NONE


@dataclass(frozen=True)
class JobSample:
    t_s: float  # seconds since the orchestrator started the migration
    elapsed_ms: int  # libvirt's own clock for the job
    iteration: int
    dirty_rate_pages_s: int
    remaining_bytes: int
    processed_bytes: int
    total_bytes: int
    bandwidth_bps: int  # memory_bps: what the stream achieves now
    constant_pages: int
    normal_pages: int
    # How hard auto-converge throttles the vCPUs now, in % (0: not throttling), and the
    # pages the destination asked for after a switch to post-copy. Kept per sample, so a
    # record shows how the throttle rose over time.
    throttle_pct: int = 0
    postcopy_requests: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_model(self) -> LiveSample:
        """The live estimates' view of this sample (same figures, the model's names)."""
        return LiveSample(elapsed_s=self.t_s, iteration=self.iteration,
                          remaining_bytes=self.remaining_bytes,
                          dirty_rate_pages_s=self.dirty_rate_pages_s,
                          bandwidth_bytes_s=self.bandwidth_bps,
                          processed_bytes=self.processed_bytes)


def _int(raw: dict[str, Any], key: str) -> int:
    return int(raw.get(key, 0) or 0)


def parse_sample(raw: dict[str, Any], t_s: float) -> JobSample | None:
    """One sample of a running job, or None when libvirt reports no job."""
    if _int(raw, "type") == JOB_NONE:
        return None
    return JobSample(
        t_s=round(t_s, 4),
        elapsed_ms=_int(raw, "time_elapsed"),
        iteration=_int(raw, "memory_iteration"),
        dirty_rate_pages_s=_int(raw, "memory_dirty_rate"),
        remaining_bytes=_int(raw, "data_remaining") or _int(raw, "memory_remaining"),
        processed_bytes=_int(raw, "data_processed") or _int(raw, "memory_processed"),
        total_bytes=_int(raw, "data_total") or _int(raw, "memory_total"),
        bandwidth_bps=_int(raw, "memory_bps"),
        constant_pages=_int(raw, "memory_constant"),
        normal_pages=_int(raw, "memory_normal"),
        # NOTE: libvirt reports auto_converge_throttle only while QEMU throttles (QEMU's
        # cpu-throttle-percentage), so its absence means 0.
        throttle_pct=_int(raw, "auto_converge_throttle"),
        postcopy_requests=_int(raw, "memory_postcopy_requests"),
    )


@dataclass(frozen=True)
class FinalStats:
    total_time_ms: int
    downtime_ms: int
    setup_time_ms: int
    iterations: int
    transferred_bytes: int
    memory_bytes: int
    constant_pages: int
    normal_pages: int
    normal_bytes: int
    bandwidth_bps: int
    dirty_rate_pages_s: int
    disk_bytes: int = 0  # storage copied along (incremental or full storage migration)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_completed(raw: dict[str, Any], samples: list[JobSample]) -> FinalStats:
    """Final figures from the completed job's stats (read on the destination).

    The completed stats carry no dirty rate, so the highest rate seen live stands in.
    """
    return FinalStats(
        total_time_ms=_int(raw, "time_elapsed"),
        downtime_ms=_int(raw, "downtime"),
        setup_time_ms=_int(raw, "setup_time"),
        iterations=_int(raw, "memory_iteration"),
        transferred_bytes=_int(raw, "data_processed") or _int(raw, "memory_processed"),
        memory_bytes=_int(raw, "memory_total"),
        constant_pages=_int(raw, "memory_constant"),
        normal_pages=_int(raw, "memory_normal"),
        normal_bytes=_int(raw, "memory_normal_bytes"),
        bandwidth_bps=_int(raw, "memory_bps"),
        dirty_rate_pages_s=max((s.dirty_rate_pages_s for s in samples), default=0),
        disk_bytes=_int(raw, "disk_processed"),
    )


PAGE_SIZE = 4096


def footprint_bytes(final: dict[str, Any], samples: Sequence[dict[str, Any]],
                    memory: int) -> int | None:
    """Non-zero bytes a migration's round 0 sent, from its record; None if unknown.

    Three upper bounds, the tightest wins: `normal_pages` at the last round-0 sample plus
    what round 0 still had to send (loose while zero pages remain: they count as
    remaining); data pages sent by the first sample of a later round (round 0's, plus at
    most one sampling interval of the next round's); the completed job's `normal_bytes`
    (every round's). The predictor needs this footprint: zero pages cross the wire as
    markers, so M alone overstates a migration several times (LAB-NOTES)."""
    bounds = [int(final.get("normal_bytes") or 0)]
    round0 = [s for s in samples if s.get("iteration") == 1]
    if round0:
        last = round0[-1]
        bounds.append(int(last.get("normal_pages", 0)) * PAGE_SIZE
                      + int(last.get("remaining_bytes", 0)))
    later = next((s for s in samples if s.get("iteration", 0) >= 2), None)
    if later is not None:
        bounds.append(int(later.get("normal_pages", 0)) * PAGE_SIZE)
    known = [b for b in bounds if b > 0]
    return min(min(known), memory) if known else None
