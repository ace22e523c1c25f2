"""ParkNet: a car's GPS plus its side-facing ultrasonic range finder → free parking spots.

Why this shape (after ParkNet, MobiSys 2010): a car driving past parked cars reads short
ranges; a gap reads long. Joining each range reading with the car's GPS fix at that moment
and snapping the position to the spot grid gives each spot's occupancy. Only a spot's state
change leaves the proxy (spot id, its grid centre, free or not, when) — never the track.
"""

from __future__ import annotations

from .base import FixJoinModel, Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SPOT_CELL_DEG = 1e-4  # about 11 m of latitude: one kerbside spot


def snap(value: float, cell: float = SPOT_CELL_DEG) -> float:
    return round(round(value / cell) * cell, 6)


def spot_id(lat: float, lon: float) -> str:
    return f"{snap(lat):.4f},{snap(lon):.4f}"


class ParkNet(FixJoinModel):
    READS = frozenset({"gps", "ultrasonic"})
    SCHEMA = {"spot": str, "lat": float, "lon": float, "free": bool, "ts": float}

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        params = params or {}
        self.free_above_cm = float(params.get("free_above_cm", 150.0))
        super().__init__(params)  # the fix join
        self.state: dict[str, bool] = {}

    def observe(self, record: Record, lat: float, lon: float) -> dict[str, Any] | None:
        spot = spot_id(lat, lon)
        free = record.value["range_cm"] > self.free_above_cm
        if self.state.get(spot) is free:
            return None
        self.state[spot] = free
        return {"spot": spot, "lat": snap(lat), "lon": snap(lon), "free": free,
                "ts": record.ts}
