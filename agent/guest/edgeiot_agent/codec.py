"""Device stream framing: newline-delimited JSON frames with per-device sequence numbers.

Why: devices talk to their proxy VM over plain TCP; JSON lines are easy to emit from any
device and to inspect. A device sends `hello` once per connection, then `rec` frames with
seq 1, 2, 3, ...; the proxy answers `welcome` (with the next seq it expects, so a device
that reconnects knows what to resend), cumulative `ack`s, `error` for a bad frame, and
`moved` (then it hangs up) when it does not serve the device now — a handover moved it to
another proxy, or is bringing it here: the device asks the directory again. The
decoder is total: any byte string yields a frame dict or a `FrameError`, never another
exception, so malformed input cannot take the proxy down.
"""

from __future__ import annotations

import json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_FRAME_BYTES = 16 * 1024
MAX_SEQ = 2**53  # JSON-safe integer range
DEVICE_ID_MAX = 128


class FrameError(ValueError):
    """A frame that cannot be accepted; the message goes back to the device."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and value == value and value not in (float("inf"), float("-inf")))


def decode_frame(line: bytes) -> dict[str, Any]:
    """One device→proxy frame, validated; raises FrameError for anything else."""
    if len(line) > MAX_FRAME_BYTES:
        raise FrameError(f"frame longer than {MAX_FRAME_BYTES} bytes")
    try:
        frame = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise FrameError(f"malformed JSON: {str(exc)[:80]}") from None
    if not isinstance(frame, dict):
        raise FrameError("frame must be a JSON object")
    kind = frame.get("t")
    if kind == "hello":
        return _check_hello(frame)
    if kind == "rec":
        return _check_record(frame)
    raise FrameError(f"unknown frame type {str(kind)[:20]!r}")


def _check_hello(frame: dict[str, Any]) -> dict[str, Any]:
    dev = frame.get("dev")
    if not isinstance(dev, str) or not 0 < len(dev) <= DEVICE_ID_MAX:
        raise FrameError("hello needs a device id 'dev'")
    return {"t": "hello", "dev": dev}


def _check_record(frame: dict[str, Any]) -> dict[str, Any]:
    seq, ts, value = frame.get("seq"), frame.get("ts"), frame.get("v")
    if not _is_int(seq) or not 1 <= seq < MAX_SEQ:
        raise FrameError("record needs an integer 'seq' >= 1")
    if not _is_number(ts):
        raise FrameError("record needs a numeric 'ts'")
    if not isinstance(value, dict):
        raise FrameError("record needs an object 'v'")
    return {"t": "rec", "seq": seq, "ts": float(ts), "v": value}


def encode(frame: dict[str, Any]) -> bytes:
    """A frame as one line (compact JSON + newline)."""
    return json.dumps(frame, separators=(",", ":")).encode() + b"\n"


def record_line(seq: int, ts: float, value: dict[str, Any]) -> bytes:
    return encode({"t": "rec", "seq": seq, "ts": ts, "v": value})


class LineSplitter:
    """Accumulates received bytes and yields complete lines; an over-long line is reported
    once as an error (None) and its bytes skipped up to the next newline."""

    def __init__(self, max_line: int = MAX_FRAME_BYTES) -> None:
        self.max_line = max_line
        self._buf = b""
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes | None]:
        self._buf += data
        out: list[bytes | None] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self.max_line:
                    if not self._skipping:
                        out.append(None)
                    self._skipping, self._buf = True, b""
                return out
            line, self._buf = self._buf[:nl], self._buf[nl + 1:]
            if self._skipping:
                self._skipping = False
                continue
            if len(line) > self.max_line:
                out.append(None)
            elif line.strip():
                out.append(line)
