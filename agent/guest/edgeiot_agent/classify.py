"""Classification of device records by data type: validate and normalise each value.

Why: the proxy knows each device's profile (its data type) from registration, so a record
is classified by the device that sent it, and its value must fit that type's schema before
any semantic model sees it. A value that does not fit is refused, not guessed at.
"""

from __future__ import annotations

import binascii

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_FRAME_PIXELS = 64 * 64

# data type -> {field: (kind, low, high)}; kind "num" or "str" or "b64"
SCHEMAS: dict[str, dict[str, tuple[str, float, float]]] = {
    "gps": {"lat": ("num", -90.0, 90.0), "lon": ("num", -180.0, 180.0)},
    "ultrasonic": {"range_cm": ("num", 0.0, 2000.0)},
    "speed": {"kmh": ("num", 0.0, 400.0)},
    "camera": {"w": ("num", 1, 64), "h": ("num", 1, 64), "px": ("b64", 0, 0),
               "lat": ("num", -90.0, 90.0), "lon": ("num", -180.0, 180.0)},
    "heart-rate": {"bpm": ("num", 20.0, 250.0)},
    "temperature": {"c": ("num", -60.0, 80.0)},
    "switch": {"on": ("num", 0, 1)},
}
DATA_TYPES = frozenset(SCHEMAS)


class ClassifyError(ValueError):
    """A value that does not fit its device's data type."""


def _number(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ClassifyError(f"{name} must be a number")
    if not low <= value <= high:  # also rejects NaN
        raise ClassifyError(f"{name}={value!r} outside [{low}, {high}]")
    return float(value)


def classify(dtype: str, value: dict[str, Any]) -> dict[str, Any]:
    """The value normalised for `dtype` (only the schema's fields); raises ClassifyError."""
    schema = SCHEMAS.get(dtype)
    if schema is None:
        raise ClassifyError(f"unknown data type {dtype!r}")
    out: dict[str, Any] = {}
    for name, (kind, low, high) in schema.items():
        if name not in value:
            raise ClassifyError(f"{dtype} record lacks {name!r}")
        if kind == "num":
            out[name] = _number(name, value[name], low, high)
        else:
            out[name] = _pixels(value[name])
    if dtype == "camera":
        w, h = int(out["w"]), int(out["h"])
        if (w, h) != (out["w"], out["h"]) or len(out["px"]) != w * h:
            raise ClassifyError("camera frame size does not match w*h")
        out["w"], out["h"] = w, h
    return out


def _pixels(value: object) -> bytes:
    if not isinstance(value, str) or len(value) > 4 * MAX_FRAME_PIXELS:
        raise ClassifyError("px must be base64 text of at most 64x64 pixels")
    try:
        return binascii.a2b_base64(value.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError):
        raise ClassifyError("px is not valid base64") from None
