"""What every semantic model shares: the record it is fed and a timestamp join.

Why: models are pure (records in, metadata dicts out) so each is unit-tested on hand-made
data; the proxy's stream service feeds them and ships what they return. A model declares
`READS` (the data types it needs; checked against the application's grants) and
`SCHEMA` (the metadata fields it emits; checked by metadata.py before anything leaves).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Record:
    """One classified device record."""

    __slots__ = ("device", "user", "dtype", "seq", "ts", "value", "group")

    def __init__(self, device: str, user: str, dtype: str, seq: int, ts: float,
                 value: dict[str, Any], group: str = "") -> None:
        self.device = device
        self.user = user
        self.group = group or user  # devices mounted together (one car); joins stay inside
        self.dtype = dtype
        self.seq = seq
        self.ts = ts
        self.value = value


class FixJoin:
    """Pairs a group's sensor readings with the group's GPS fix nearest in time.

    A group is the set of devices mounted together (one car's GPS, ultrasonic sensor and
    speedometer); the device profile names it, by default the user.

    A reading is resolved only once a fix at or after its timestamp has arrived (the GPS
    and the sensor reach the proxy over separate connections, in either order), so the
    pairing does not depend on arrival order. Pending readings and fixes are bounded.
    """

    def __init__(self, tolerance_s: float = 0.5, keep: int = 64) -> None:
        self.tolerance_s = tolerance_s
        self.keep = keep
        self._fixes: dict[str, list[tuple[float, float, float]]] = {}
        self._pending: dict[str, list[Record]] = {}

    def add_fix(self, group: str, ts: float, lat: float,
                lon: float) -> list[tuple[Record, float, float]]:
        fixes = self._fixes.setdefault(group, [])
        fixes.append((ts, lat, lon))
        fixes.sort()
        del fixes[:-self.keep]
        waiting = self._pending.get(group, [])
        done = [r for r in waiting if r.ts <= ts]
        self._pending[group] = [r for r in waiting if r.ts > ts]
        return [j for r in done if (j := self._resolve(r)) is not None]

    def add_reading(self, record: Record) -> list[tuple[Record, float, float]]:
        fixes = self._fixes.get(record.group, [])
        if fixes and fixes[-1][0] >= record.ts:
            joined = self._resolve(record)
            return [joined] if joined is not None else []
        pending = self._pending.setdefault(record.group, [])
        pending.append(record)
        del pending[:-self.keep]
        return []

    def _resolve(self, record: Record) -> tuple[Record, float, float] | None:
        fixes = self._fixes.get(record.group, [])
        if not fixes:
            return None
        ts, lat, lon = min(fixes, key=lambda f: abs(f[0] - record.ts))
        if abs(ts - record.ts) > self.tolerance_s:
            return None
        return record, lat, lon


class FixJoinModel:
    """A model of a group's sensor readings placed by the group's GPS fix (ParkNet, traffic).

    `feed` joins each reading with its fix (`params["tolerance_s"]`, default 0.5 s) and hands
    every joined reading to `observe`, which returns a metadata dict or None.
    """

    def __init__(self, params: dict[str, Any]) -> None:
        self.join = FixJoin(float(params.get("tolerance_s", 0.5)))

    def feed(self, record: Record) -> list[dict[str, Any]]:
        if record.dtype == "gps":
            joined = self.join.add_fix(record.group, record.ts, record.value["lat"],
                                       record.value["lon"])
        else:
            joined = self.join.add_reading(record)
        return [m for r, lat, lon in joined if (m := self.observe(r, lat, lon))]

    def observe(self, record: Record, lat: float, lon: float) -> dict[str, Any] | None:
        raise NotImplementedError
