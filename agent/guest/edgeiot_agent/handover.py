"""A device's stream snapshot, as it travels between proxies during a handover.

Why a checked format: a snapshot decides which sequence number the adopting proxy accepts
next, so a malformed one must be refused before anything changes (a wrong `next` would
skip or repeat records). The orchestrator only carries snapshots from `device_release` on
one proxy to `device_adopt` on another; it never edits them.
"""

from __future__ import annotations

from .classify import DATA_TYPES
from .codec import DEVICE_ID_MAX, MAX_SEQ

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

COUNTERS = ("accepted", "duplicates", "invalid", "raw_bytes")
CHAIN_CHARS = frozenset("0123456789abcdef")


class SnapshotError(ValueError):
    """A snapshot that cannot be adopted."""


def _count(snap: dict[str, Any], key: str, low: int) -> int:
    value = snap.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value < MAX_SEQ:
        raise SnapshotError(f"{key!r} must be an integer >= {low}")
    return value


def parse_snapshot(snap: Any) -> dict[str, Any]:
    """The snapshot, validated and normalised; SnapshotError for anything else."""
    if not isinstance(snap, dict):
        raise SnapshotError("a snapshot must be an object")
    dev, dtype, user = snap.get("id"), snap.get("type"), snap.get("user")
    if not isinstance(dev, str) or not 0 < len(dev) <= DEVICE_ID_MAX:
        raise SnapshotError("a snapshot needs a device id")
    if dtype not in DATA_TYPES or not isinstance(user, str) or not user:
        raise SnapshotError(f"{dev}: a snapshot needs a known data type and a user")
    role, group, chain = snap.get("role", "sensor"), snap.get("group") or user, snap.get("chain")
    if role not in ("sensor", "actuator") or not isinstance(group, str):
        raise SnapshotError(f"{dev}: bad role or group")
    if not isinstance(chain, str) or len(chain) > 64 or not set(chain) <= CHAIN_CHARS:
        raise SnapshotError(f"{dev}: 'chain' must be a hex digest")
    out = {"id": dev, "type": dtype, "user": user, "role": role, "group": group,
           "next": _count(snap, "next", 1), "chain": chain}
    for key in COUNTERS:
        out[key] = _count(snap, key, 0)
    if out["accepted"] + out["invalid"] != out["next"] - 1:
        raise SnapshotError(f"{dev}: accepted + invalid must be next - 1")
    if (out["accepted"] == 0) != (chain == ""):
        raise SnapshotError(f"{dev}: the chain must be empty exactly when nothing was accepted")
    return out
