"""Traffic congestion: GPS plus speed → a congestion degree per area.

Why: each car's speed, placed in its area by the GPS fix at that moment, is averaged over a
sliding window per area; degree = 1 - mean speed / free-flow speed, clipped to [0, 1].
Only the area's degree (and how many samples it rests on) leaves the proxy, and only when
it changed noticeably or enough new samples arrived.
"""

from __future__ import annotations

import math

from .base import FixJoinModel, Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

AREA_CELL_DEG = 0.01  # about 1.1 km


def area_of(lat: float, lon: float, cell: float = AREA_CELL_DEG) -> str:
    """Grid cell name 'A<row>_<col>'; rows and columns count cells from (0, 0)."""
    return f"A{math.floor(lat / cell)}_{math.floor(lon / cell)}"


def degree(mean_kmh: float, free_flow_kmh: float) -> float:
    return round(min(1.0, max(0.0, 1.0 - mean_kmh / free_flow_kmh)), 3)


class Traffic(FixJoinModel):
    READS = frozenset({"gps", "speed"})
    SCHEMA = {"area": str, "degree": float, "samples": int, "ts": float}

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        params = params or {}
        self.free_flow_kmh = float(params.get("free_flow_kmh", 50.0))
        self.window = int(params.get("window", 20))
        self.emit_every = int(params.get("emit_every", 10))
        super().__init__(params)  # the fix join
        self.speeds: dict[str, list[float]] = {}
        self.since: dict[str, int] = {}
        self.last: dict[str, float] = {}

    def observe(self, record: Record, lat: float, lon: float) -> dict[str, Any] | None:
        area = area_of(lat, lon)
        speeds = self.speeds.setdefault(area, [])
        speeds.append(record.value["kmh"])
        del speeds[:-self.window]
        self.since[area] = self.since.get(area, 0) + 1
        current = degree(sum(speeds) / len(speeds), self.free_flow_kmh)
        previous = self.last.get(area)
        changed = previous is None or abs(current - previous) >= 0.1
        if not changed and self.since[area] < self.emit_every:
            return None
        self.since[area], self.last[area] = 0, current
        return {"area": area, "degree": current, "samples": len(speeds), "ts": record.ts}
