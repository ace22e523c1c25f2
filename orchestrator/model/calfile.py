"""What the pre-copy predictor is told: a migration's inputs, and the calibration file.

Why apart from the model: the inputs and the calibration's versioned JSON schema are what
other layers (the CLI, the calibration store, the campaign) read and write; the model's
equations (`precopy`) and the live estimates (`live`) only consume them. Pure.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

GIB = 1024**3
MIB = 1024**2
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
    # Set when the dirty rate is a hypervisor measurement (distinct pages written over this
    # many seconds, e.g. libvirt's page sampling) rather than a write rate: the model then
    # lets the dirty set saturate towards W instead of growing linearly (see precopy).
    dirty_window_s: float | None = None

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
        if self.dirty_window_s is not None:
            _require(math.isfinite(self.dirty_window_s) and self.dirty_window_s > 0,
                     f"dirty-rate window must be > 0 s, got {self.dirty_window_s}")
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
    The hot set H is not fitted (iteration counts barely tell it apart from c): idle
    guests in the lab's campaigns showed 15-100 pages/s of QEMU-measured dirtying, i.e.
    ~0.03-0.2 MiB over the ~0.5 s round that ends round 0; 0.1 MiB is the middle, and the
    iteration counts of both campaigns' converged migrations fit best at 0.05-0.15 MiB. c
    is what the quick campaign's counts gave (0.0175-0.025 s); the job-stats samples agree:
    each sync found ~r·0.02-0.03 s more new dirty pages than r·Δt. σ is not fitted either:
    a capped pass costs max(wire/B, CPU) and no grid migration was CPU-bound (a 1 GiB idle
    guest at 100 MiB/s took no longer than a 512 MiB one), so the records only bound it
    (σ ≲ 1 s/GiB); it stays at 0 unless set.
    """

    setup_s: float = 0.3  # before round 0 moves bytes: destination start, handshake
    bandwidth_efficiency: float = 0.95  # B = η × configured bandwidth (framing, TCP, pacing)
    zero_page_wire_ratio: float = 9 / 4096  # wire bytes per zero byte (8 B header + 1 B)
    zero_scan_s_per_gib: float = 0.0  # σ: CPU time per GiB of zero pages (not fitted)
    footprint_base_bytes: float = 73e6  # default footprint when the guest's is unknown…
    footprint_fraction: float = 0.023  # … F = min(M, base + fraction × M)
    downtime_overhead_s: float = 0.02  # device state, pause/resume, announce
    # After QEMU's job ends, until libvirt's migrate call returns (destination resume,
    # confirm, the final figures): 2.1-2.8 s under TCG, median 2.5 s (quick campaign,
    # 2026-12-08). The live ETA counts it; Tmig (QEMU's own time) does not.
    finish_s: float = 2.5
    stop_copy_s_per_mib: float = 0.004  # k: CPU/uncapped cost per MiB on the wire
    round_overhead_s: float = 0.02  # c: each dirty-bitmap sync's cost; the guest dirties on
    hot_set_bytes: float = 0.1 * MIB  # H: pages every sync finds dirty, however short a round
    time_rel_spread: float = 0.10  # ~90th percentile |relative residual| of Tmig
    time_abs_spread_s: float = 0.2  # residual floor for short migrations
    bytes_rel_spread: float = 0.10  # ~90th percentile |relative residual| of bytes
    downtime_abs_spread_s: float = 0.05  # ~90th percentile |residual| of downtime
    bandwidth_rel_sd: float = 0.05  # how much the achieved bandwidth wanders
    fitted_on: int = 0  # migrations the fit used; 0 means these are defaults
    source: str = "defaults (LAB-NOTES busybox guest)"
    qemu_version: str = ""  # the QEMU the fit's migrations ran on ("" = unknown, defaults)
    workloads: str = ""  # the workload families the fit saw, comma-separated

    def qemu_mismatch(self, qemu_version: str | None) -> str | None:
        """Why this calibration may not fit migrations on `qemu_version`, or None.

        Major.minor must match: QEMU's pre-copy loop, its switch-over rule and its TCG dirty
        tracking (fixed in 9.0) change between releases, not between stable updates.
        """
        if not qemu_version or not self.qemu_version:
            return None
        if _major_minor(qemu_version) == _major_minor(self.qemu_version):
            return None
        return (f"the calibration was fitted on QEMU {self.qemu_version}, this migration runs "
                f"on QEMU {qemu_version}")

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


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.strip().split(".")[:2])


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
