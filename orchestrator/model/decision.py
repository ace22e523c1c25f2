"""The migration decision rule (Eq. 1 of the edgeIoT paper).

While a user's devices sit at a base station served by a remote fog node, every byte they
send crosses the core: over a dwell of T_BS seconds that is T_BS·r_data. Migrating the
proxy VM instead costs the migration stream (r_mig·Tmig), the data that still crosses the
core while the migration runs (r_data·Tmig) and a fixed overhead ε (signalling, the final
stop-and-copy). Migrating pays off iff

    r_mig·Tmig + r_data·Tmig + ε < T_BS·r_data
    ⇔  Tmig < (T_BS·r_data − ε) / (r_mig + r_data)

Units: seconds, bytes and bytes per second throughout. The arithmetic works element-wise on
numpy arrays as well as on floats, so the trace simulator uses the very same rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, TypeVar

Number = TypeVar("Number", float, Any)  # float, or a numpy array for the simulator


def migration_threshold_s(dwell_s: Number, r_data_bps: Number, r_mig_bps: Number,
                          epsilon_bytes: Number = 0.0) -> Number:
    """Largest migration time that still saves core traffic; ≤ 0 means never migrate."""
    return (dwell_s * r_data_bps - epsilon_bytes) / (r_mig_bps + r_data_bps)


def core_bytes_if_migrating(t_mig_s: Number, dwell_s: Number, r_data_bps: Number,
                            r_mig_bps: Number, epsilon_bytes: Number = 0.0) -> Number:
    """Core bytes of the migrate branch: stream, data during the migration, overhead."""
    del dwell_s  # after the migration the data stays local: only the migration window counts
    return (r_mig_bps + r_data_bps) * t_mig_s + epsilon_bytes


def core_bytes_if_staying(dwell_s: Number, r_data_bps: Number) -> Number:
    """Core bytes of the stay branch: every byte of the dwell goes to the remote proxy."""
    return dwell_s * r_data_bps


@dataclass(frozen=True)
class Decision:
    """One verdict with the inputs that produced it, so it can be logged and audited."""

    migrate: bool
    t_mig_s: float
    threshold_s: float
    dwell_s: float
    r_data_bps: float
    r_mig_bps: float
    epsilon_bytes: float

    @property
    def saved_bytes(self) -> float:
        """Core bytes saved by migrating (negative: migrating would cost more)."""
        stay = core_bytes_if_staying(self.dwell_s, self.r_data_bps)
        move = core_bytes_if_migrating(self.t_mig_s, self.dwell_s, self.r_data_bps,
                                       self.r_mig_bps, self.epsilon_bytes)
        return float(stay - move)

    def as_dict(self) -> dict[str, float | bool]:
        return {**asdict(self), "saved_bytes": self.saved_bytes}


def decide(t_mig_s: float, dwell_s: float, r_data_bps: float, r_mig_bps: float,
           epsilon_bytes: float = 0.0) -> Decision:
    """Apply Eq. 1. Rejects inputs that make the rule meaningless."""
    for name, value in (("t_mig_s", t_mig_s), ("dwell_s", dwell_s),
                        ("r_data_bps", r_data_bps), ("epsilon_bytes", epsilon_bytes)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if r_mig_bps <= 0:
        raise ValueError(f"r_mig_bps must be > 0, got {r_mig_bps}")
    threshold = migration_threshold_s(dwell_s, r_data_bps, r_mig_bps, epsilon_bytes)
    return Decision(
        migrate=bool(t_mig_s < threshold),
        t_mig_s=t_mig_s,
        threshold_s=float(threshold),
        dwell_s=dwell_s,
        r_data_bps=r_data_bps,
        r_mig_bps=r_mig_bps,
        epsilon_bytes=epsilon_bytes,
    )
