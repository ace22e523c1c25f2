"""Face matching for the find-a-missing-child event, by perceptual (average) hashing.

Why: the proxy must find a target face in camera frames without numpy and without sending
frames anywhere. An average hash (8x8 block means thresholded at their mean) is stable
under noise and small brightness changes; frames within `max_distance` bits of the
target's hash are matches, and only where and when (camera, its position, time, distance)
leaves the proxy.
"""

from __future__ import annotations

import binascii

from .base import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

HASH_SIDE = 8


def block_means(px: bytes, w: int, h: int, side: int = HASH_SIDE) -> list[float]:
    """Mean grey level of each of side x side blocks (w and h at least `side`)."""
    means = []
    for by in range(side):
        y0, y1 = by * h // side, (by + 1) * h // side
        for bx in range(side):
            x0, x1 = bx * w // side, (bx + 1) * w // side
            total = sum(sum(px[y * w + x0:y * w + x1]) for y in range(y0, y1))
            means.append(total / ((y1 - y0) * (x1 - x0)))
    return means


def average_hash(px: bytes, w: int, h: int) -> int:
    """64-bit aHash: bit i set when block i is brighter than the mean of all blocks."""
    if w < HASH_SIDE or h < HASH_SIDE or len(px) != w * h:
        raise ValueError("frame too small for an 8x8 hash or size mismatch")
    means = block_means(px, w, h)
    avg = sum(means) / len(means)
    bits = 0
    for i, m in enumerate(means):
        if m > avg:
            bits |= 1 << i
    return bits


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


class FaceMatch:
    READS = frozenset({"camera"})
    SCHEMA = {"camera": str, "lat": float, "lon": float, "ts": float, "distance": int}

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        params = params or {}
        self.max_distance = int(params.get("max_distance", 10))
        if "target_hash" in params:
            self.target = int(str(params["target_hash"]), 16)
        else:
            px = binascii.a2b_base64(str(params["target_px"]).encode())
            self.target = average_hash(px, int(params["w"]), int(params["h"]))

    def feed(self, record: Record) -> list[dict[str, Any]]:
        v = record.value
        try:
            found = average_hash(v["px"], v["w"], v["h"])
        except ValueError:
            return []
        distance = hamming(found, self.target)
        if distance > self.max_distance:
            return []
        return [{"camera": record.device, "lat": v["lat"], "lon": v["lon"], "ts": record.ts,
                 "distance": distance}]
