"""Memory dirtier: writes one byte per 4 KiB page of a working set at a requested pages/s.

Why: pre-copy live migration converges only if the guest dirties pages slower than the link
sends them, so calibrating the orchestrator's predictor needs a guest whose dirty rate and
writable working set are set at run time.

How: a token bucket. Every step adds `rate * dt` pages of credit (capped at `MAX_LAG_S` worth,
so a stalled guest does not burst afterwards) and spends it in batches of at most
`BATCH_PAGES`, each one strided slice assignment (`buf[a:b:4096] = pattern`), so the
per-page cost is C, not Python. Written values are never zero and change on every pass over
the buffer (zero pages migrate as tiny markers and would hide the traffic). The achieved
rate is measured over a sliding window; under TCG a requested rate above what the vCPU can
write is simply reported lower. `step(now)` takes the clock as an argument for tests.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque

from .control import RequestError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .control import Request, Response

PAGE_SIZE = 4096
BATCH_PAGES = 512
MAX_LAG_S = 0.1
WINDOW_S = 1.0
TICK_S = 0.005
MIB = 1024 * 1024
# Bounds on a `dirty` request: far above what a TCG vCPU can write (~50k pages/s), so
# calibration is never limited, yet a request cannot ask the thread to spin on a credit
# it can never spend, nor allocate beyond any guest's memory.
MAX_PAGES_PER_S = 300_000
MAX_WORKING_SET_BYTES = 4 * 1024 * MIB


class Dirtier:
    """Dirties `pages_per_s` pages/s of a `working_set_bytes` buffer from a daemon thread."""

    name = "dirtier"

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        max_working_set: Callable[[], int] | None = None,
    ) -> None:
        self._clock = clock
        self._max_working_set = max_working_set
        self._lock = threading.Lock()
        self._buf = bytearray()
        self._view = memoryview(self._buf)
        self._rate = 0
        self._credit = 0.0
        self._last: float | None = None
        self._cursor = 0
        self._pass = 1
        self._total = 0
        self._samples: deque[tuple[float, int]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- configuration ------------------------------------------------------------------
    def configure(self, pages_per_s: int, working_set_bytes: int) -> None:
        """Set rate and working set; a new size reallocates, the same size keeps the buffer."""
        if pages_per_s < 0 or working_set_bytes < 0:
            raise ValueError("pages_per_s and working set must be >= 0")
        if pages_per_s > MAX_PAGES_PER_S:
            raise ValueError(f"pages_per_s above the limit {MAX_PAGES_PER_S}")
        if working_set_bytes > MAX_WORKING_SET_BYTES:
            raise ValueError(f"working set above the limit {MAX_WORKING_SET_BYTES} B")
        if pages_per_s > 0 and working_set_bytes < PAGE_SIZE:
            raise ValueError("a positive pages_per_s needs a working set of at least one page")
        if self._max_working_set is not None and working_set_bytes != len(self._buf):
            limit = self._max_working_set() + len(self._buf)  # the old buffer is freed
            if working_set_bytes > limit:
                raise ValueError(f"working set {working_set_bytes} B exceeds the limit {limit} B")
        with self._lock:
            if working_set_bytes != len(self._buf):
                self._view.release()
                self._buf = bytearray(working_set_bytes)
                self._view = memoryview(self._buf)
                self._cursor = 0
            self._rate = pages_per_s
            self._credit = 0.0
            self._last = None
            self._samples.clear()
        self._wake.set()

    @property
    def working_set_bytes(self) -> int:
        return len(self._buf)

    @property
    def pages_per_s(self) -> int:
        return self._rate

    # -- the paced writer ---------------------------------------------------------------
    def step(self, now: float) -> int:
        """Spend the credit accrued up to `now`; returns the pages written by this call."""
        with self._lock:
            npages = len(self._buf) // PAGE_SIZE
            if self._rate <= 0 or npages == 0:
                self._last = now
                return 0
            dt = 0.0 if self._last is None else max(now - self._last, 0.0)
            self._last = now
            cap = max(self._rate * MAX_LAG_S, 1.0)
            self._credit = min(self._credit + self._rate * dt, cap)
            todo = min(int(self._credit), BATCH_PAGES)
            written = self._write(todo, npages)
            self._credit -= written
            self._total += written
            self._record(now)
            return written

    def _write(self, count: int, npages: int) -> int:
        done = 0
        while done < count:
            chunk = min(count - done, npages - self._cursor)
            start = self._cursor * PAGE_SIZE
            self._view[start : start + chunk * PAGE_SIZE : PAGE_SIZE] = bytes((self._pass,)) * chunk
            done += chunk
            self._cursor += chunk
            if self._cursor >= npages:
                self._cursor = 0
                self._pass = self._pass % 255 + 1  # never 0: zero pages migrate as markers
        return done

    def _record(self, now: float) -> None:
        self._samples.append((now, self._total))
        while len(self._samples) > 2 and now - self._samples[1][0] >= WINDOW_S:
            self._samples.popleft()

    def achieved_pages_per_s(self) -> float:
        with self._lock:
            if self._rate <= 0 or len(self._samples) < 2:
                return 0.0
            (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def pending(self) -> bool:
        """True while credit is owed (the writer is behind): the loop should not sleep."""
        return self._rate > 0 and self._credit >= 1.0

    # -- service ------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dirtier", daemon=True)
            self._thread.start()

    def alive(self) -> bool:
        """False once the thread died (the agent's supervisor then calls `revive`)."""
        return self._thread is None or self._thread.is_alive() or self._stop.is_set()

    def revive(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dirtier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step(self._clock())
            if self._rate <= 0:
                self._wake.wait()  # idle: sleep until configure() or stop()
                self._wake.clear()
            elif not self.pending():
                time.sleep(TICK_S)

    def status(self) -> dict[str, Any]:
        return {
            "dirty": {
                "pages_per_s": self._rate,
                "working_set_bytes": len(self._buf),
                "achieved_pages_per_s": round(self.achieved_pages_per_s(), 1),
                "total_pages": self._total,
            }
        }

    def ops(self) -> dict[str, Callable[[Request], Response]]:
        return {"dirty": self.handle_dirty}

    def handle_dirty(self, request: Request) -> Response:
        """`{"op":"dirty","pages_per_s":N,"working_set_mib":M}`; omitted fields keep their value."""
        rate = _number(request, "pages_per_s", self._rate)
        mib = _number(request, "working_set_mib", len(self._buf) / MIB)
        try:
            self.configure(int(rate), int(mib * MIB))
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        return self.status()


def _number(request: Request, key: str, default: float) -> float:
    value = request.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"{key} must be a finite number")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        raise RequestError(f"{key} above the limit") from None
    if not math.isfinite(number):
        raise RequestError(f"{key} must be a finite number")
    if number < 0:
        raise RequestError(f"{key} must be >= 0")
    return number
