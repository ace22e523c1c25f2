"""A counter that ticks in its own thread and is never reset.

Why: after a live migration the host compares the counter before and after; a value that
kept increasing (with the same boot id) proves the guest ran on without a reboot. Counting
ticks rather than reading a clock keeps it monotonic even if guest time jumps.
"""

from __future__ import annotations

import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Counter:
    """Increments `value` every `interval_s` seconds from a daemon thread."""

    name = "counter"

    def __init__(self, interval_s: float = 0.01) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self._interval_s = interval_s
        self._value = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def value(self) -> int:
        return self._value

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="counter", daemon=True)
            self._thread.start()

    def alive(self) -> bool:
        """False once the thread died (the agent's supervisor then calls `revive`)."""
        return self._thread is None or self._thread.is_alive() or self._stop.is_set()

    def revive(self) -> None:
        self._thread = threading.Thread(target=self._run, name="counter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _run(self) -> None:
        # NOTE: only this thread writes _value; readers see a consistent int under the GIL.
        while not self._stop.wait(self._interval_s):
            self._value += 1

    def status(self) -> dict[str, Any]:
        return {"counter": self._value}

    def ops(self) -> dict[str, Any]:
        return {}
