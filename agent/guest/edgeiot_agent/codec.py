"""Device stream framing: newline-delimited JSON frames with per-device sequence numbers.

Why: devices talk to their proxy VM over plain TCP; JSON lines are easy to emit from any
device and to inspect. The frames are wire.py's (`hello`, `auth`, `rec`, `ping` from the
device; `challenge`, `welcome`, `refused`, `ack`, `error`, `moved`, `cmd`, `pong` from the
proxy). The decoder is total: any byte string yields a frame dict or a `FrameError`, never
another exception, so malformed input cannot take the proxy down.
"""

from __future__ import annotations

from . import wire
from .lineserver import LineSplitter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_FRAME_BYTES = wire.MAX_FRAME_BYTES
MAX_SEQ = wire.MAX_SEQ
DEVICE_ID_MAX = wire.DEVICE_ID_MAX
__all__ = ["FrameError", "LineSplitter", "decode_frame", "encode"]


class FrameError(ValueError):
    """A frame that cannot be accepted; the message goes back to the device."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and value == value and value not in (float("inf"), float("-inf")))


def decode_frame(line: bytes) -> dict[str, Any]:
    """One device->proxy frame, validated; raises FrameError for anything else."""
    if len(line) > MAX_FRAME_BYTES:
        raise FrameError(f"frame longer than {MAX_FRAME_BYTES} bytes")
    try:
        frame = wire.loads(line)
    except ValueError as exc:
        raise FrameError(str(exc)) from None
    if not isinstance(frame, dict):
        raise FrameError("frame must be a JSON object")
    kind = frame.get(wire.FRAME_KIND)
    if kind == wire.F_REC:
        return _check_record(frame)
    if kind == wire.F_HELLO:
        return {wire.FRAME_KIND: kind, "dev": _device_id(frame)}
    if kind == wire.F_AUTH:
        mac = frame.get("mac")
        if not isinstance(mac, str) or len(mac) != wire.MAC_HEX_CHARS:
            raise FrameError("auth needs a 'mac' of 64 hex characters")
        return {wire.FRAME_KIND: kind, "dev": _device_id(frame), "mac": mac}
    if kind == wire.F_PING:
        return {wire.FRAME_KIND: kind}
    raise FrameError(f"unknown frame type {str(kind)[:20]!r}")


def _device_id(frame: dict[str, Any]) -> str:
    dev = frame.get("dev")
    if not isinstance(dev, str) or not 0 < len(dev) <= DEVICE_ID_MAX:
        raise FrameError(f"{frame[wire.FRAME_KIND]} needs a device id 'dev'")
    return dev


def _check_record(frame: dict[str, Any]) -> dict[str, Any]:
    seq, ts, value = frame.get("seq"), frame.get("ts"), frame.get("v")
    if not _is_int(seq) or not 1 <= seq < MAX_SEQ:
        raise FrameError("record needs an integer 'seq' >= 1")
    if not _is_number(ts):
        raise FrameError("record needs a numeric 'ts'")
    if not isinstance(value, dict):
        raise FrameError("record needs an object 'v'")
    return {wire.FRAME_KIND: wire.F_REC, "seq": seq, "ts": float(ts), "v": value}


def encode(frame: dict[str, Any]) -> bytes:
    """A frame as one line (compact JSON + newline)."""
    return wire.dumps(frame)
