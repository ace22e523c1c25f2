"""Workload families: in-guest programs that write memory in the patterns real guests do.

Why: a pre-copy predictor calibrated on one writer (the dirtier's sequential sweep) was 11 %
off on a guest writing another way. What a migration resends is the set of *distinct* pages
written between two dirty-bitmap syncs, and how that set grows with time depends on the
pattern, not only on the write rate. So the calibration lab runs several families, and a
user can start one in any VM (`orchestrator vm workload NAME --kind KIND`) to see how a
policy copes:

    kind      which page each write hits                 distinct pages after n writes (N pages)
    sweep     the next page, cyclically                   min(N, n)
    uniform   any page, uniformly at random               N·(1 − (1 − 1/N)^n)
    zipf      page of rank k with probability ∝ 1/k^s     Σ_k 1 − (1 − p_k)^n
    bursty    uniform, at the rate during `on_s`, none   uniform's, with n the writes made
              during `off_s`, repeating                   in the on-phases only

(the proxy-ingest family is the data plane itself: stream records into a proxy VM.) Each
write sets one byte of a 4 KiB page to a never-zero value that changes on every write, so
the page is dirty and non-zero (zero pages migrate as tiny markers). Pacing is a token
bucket like the dirtier's; `step(now)` takes the clock so tests drive it. Stdlib only.
"""

from __future__ import annotations

import bisect
import math
import random
import threading
import time

from .control import RequestError
from .wire import OP_WORKLOAD

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .control import Request, Response

PAGE_SIZE = 4096
MIB = 1024 * 1024
KINDS = ("none", "sweep", "uniform", "zipf", "bursty")
BATCH_PAGES = 256
MAX_LAG_S = 0.1
TICK_S = 0.005
MAX_PAGES_PER_S = 300_000
MAX_WORKING_SET_BYTES = 4 * 1024 * MIB
DEFAULT_ZIPF_S = 1.0
DEFAULT_ON_S = 1.0
DEFAULT_OFF_S = 1.0


# --------------------------------------------------------------------------- page choosers


class Sweep:
    """Pages in order, wrapping around: a cyclic writer (log buffer, video frames)."""

    def __init__(self, npages: int) -> None:
        self.npages = npages
        self.cursor = 0

    def pick(self, count: int) -> list[int]:
        pages = [(self.cursor + i) % self.npages for i in range(count)]
        self.cursor = (self.cursor + count) % self.npages
        return pages


class Uniform:
    """Any page with equal probability: a hash table, a random-access cache."""

    def __init__(self, npages: int, rng: random.Random) -> None:
        self.npages = npages
        self.rng = rng

    def pick(self, count: int) -> list[int]:
        return [self.rng.randrange(self.npages) for _ in range(count)]


class Zipf:
    """Page k (0-based rank) with probability ∝ 1/(k+1)^s: a few hot pages, a long cold tail."""

    def __init__(self, npages: int, rng: random.Random, s: float = DEFAULT_ZIPF_S) -> None:
        self.npages = npages
        self.rng = rng
        self.cdf = _cumulative(zipf_weights(npages, s))

    def pick(self, count: int) -> list[int]:
        top = self.cdf[-1]
        return [min(self.npages - 1, bisect.bisect_right(self.cdf, self.rng.random() * top))
                for _ in range(count)]


def zipf_weights(npages: int, s: float) -> list[float]:
    """Normalised Zipf probabilities p_k = (1/(k+1)^s) / H."""
    raw = [1.0 / (k + 1) ** s for k in range(npages)]
    total = sum(raw)
    return [w / total for w in raw]


def _cumulative(weights: list[float]) -> list[float]:
    out, running = [], 0.0
    for w in weights:
        running += w
        out.append(running)
    return out


def bursty_active(elapsed_s: float, on_s: float, off_s: float) -> bool:
    """On for `on_s`, off for `off_s`, starting on."""
    period = on_s + off_s
    return period <= 0 or elapsed_s % period < on_s


def bursty_on_time(elapsed_s: float, on_s: float, off_s: float) -> float:
    """Seconds spent writing in [0, elapsed_s]: whole periods, plus the current on-phase."""
    period = on_s + off_s
    whole, rest = divmod(max(0.0, elapsed_s), period)
    return whole * on_s + min(rest, on_s)


# --------------------------------------------------------------------------- expectations


def expected_distinct(kind: str, writes: float, npages: int, s: float = DEFAULT_ZIPF_S) -> float:
    """Expected distinct pages after `writes` writes over `npages` pages (the table above;
    for bursty, count only the writes of the on-phases)."""
    if npages <= 0 or writes <= 0:
        return 0.0
    if kind == "sweep":
        return float(min(npages, writes))
    if kind in ("uniform", "bursty"):
        return npages * -math.expm1(writes * math.log1p(-1.0 / npages)) if npages > 1 else 1.0
    if kind == "zipf":
        return sum(1.0 - (1.0 - p) ** writes for p in zipf_weights(npages, s))
    raise ValueError(f"unknown workload kind {kind!r}")


# --------------------------------------------------------------------------- the service


class Workloads:
    """Runs at most one workload family at a time from a daemon thread."""

    name = "workload"

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 max_working_set: Callable[[], int] | None = None,
                 seed: int | None = None) -> None:
        self._clock = clock
        self._max_working_set = max_working_set
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._buf = bytearray()
        self._view = memoryview(self._buf)
        self._kind = "none"
        self._rate = 0
        self._params: dict[str, float] = {}
        self._chooser: Sweep | Uniform | Zipf | None = None
        self._started = 0.0
        self._credit = 0.0
        self._last: float | None = None
        self._value = 1
        self._total = 0
        self._window: list[tuple[float, int]] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written: list[int] | None = None  # tests set a list to record page indices

    def configure(self, kind: str, pages_per_s: int = 0, working_set_bytes: int = 0,
                  **params: float) -> None:
        """Start `kind` (stopping the previous one); "none" stops and frees the buffer."""
        _check_config(kind, pages_per_s, working_set_bytes)
        if kind == "none":
            working_set_bytes, pages_per_s = 0, 0
        if self._max_working_set is not None and working_set_bytes > len(self._buf):
            limit = self._max_working_set() + len(self._buf)
            if working_set_bytes > limit:
                raise ValueError(f"working set {working_set_bytes} B exceeds the limit {limit} B")
        with self._lock:
            if working_set_bytes != len(self._buf):
                self._view.release()
                self._buf = bytearray()  # free the old buffer before allocating the new one
                self._buf = bytearray(working_set_bytes)
                self._view = memoryview(self._buf)
            self._kind, self._rate, self._params = kind, pages_per_s, dict(params)
            self._chooser = self._make_chooser(kind, working_set_bytes // PAGE_SIZE)
            now = self._clock()
            self._started, self._credit, self._last = now, 0.0, now
            self._window.clear()
        self._wake.set()

    def _make_chooser(self, kind: str, npages: int) -> Sweep | Uniform | Zipf | None:
        if kind == "none" or npages == 0:
            return None
        if kind == "sweep":
            return Sweep(npages)
        if kind == "zipf":
            return Zipf(npages, self._rng, self._params.get("zipf_s", DEFAULT_ZIPF_S))
        return Uniform(npages, self._rng)

    def step(self, now: float) -> int:
        """Spend the credit accrued up to `now` (none while a bursty writer is off)."""
        with self._lock:
            chooser = self._chooser
            dt = 0.0 if self._last is None else max(now - self._last, 0.0)
            self._last = now
            if chooser is None or self._rate <= 0 or not self._active(now):
                return 0
            self._credit = min(self._credit + self._rate * dt, max(self._rate * MAX_LAG_S, 1.0))
            count = min(int(self._credit + 1e-9), BATCH_PAGES)  # float steps: 19.999… is 20
            pages = chooser.pick(count)
            for page in pages:
                self._view[page * PAGE_SIZE] = self._value
                self._value = self._value % 255 + 1  # never 0: zero pages migrate as markers
            if self.written is not None:
                self.written.extend(pages)
            self._credit -= count
            self._total += count
            self._window = [*self._window[-50:], (now, self._total)]
            return count

    def _active(self, at: float) -> bool:
        if self._kind != "bursty":
            return True
        return bursty_active(at - self._started, self._params.get("on_s", DEFAULT_ON_S),
                             self._params.get("off_s", DEFAULT_OFF_S))

    def achieved_pages_per_s(self) -> float:
        with self._lock:
            if len(self._window) < 2:
                return 0.0
            (t0, n0), (t1, n1) = self._window[0], self._window[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    # -- service ------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self.revive()

    def alive(self) -> bool:
        return self._thread is None or self._thread.is_alive() or self._stop.is_set()

    def revive(self) -> None:
        self._thread = threading.Thread(target=self._run, name="workload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.is_set():
            written = self.step(self._clock())
            if self._chooser is None or self._rate <= 0:
                self._wake.wait()
                self._wake.clear()
            elif written < BATCH_PAGES:
                time.sleep(TICK_S)

    def status(self) -> dict[str, Any]:
        return {"workload": {"kind": self._kind, "pages_per_s": self._rate,
                             "working_set_bytes": len(self._buf), **self._params,
                             "achieved_pages_per_s": round(self.achieved_pages_per_s(), 1),
                             "total_pages": self._total}}

    def ops(self) -> dict[str, Callable[[Request], Response]]:
        return {OP_WORKLOAD: self.handle}

    def handle(self, request: Request) -> Response:
        """`{"op":"workload","kind":K,"pages_per_s":N,"working_set_mib":M,...}`."""
        kind = request.get("kind")
        if not isinstance(kind, str) or kind not in KINDS:
            raise RequestError(f"unknown workload kind {kind!r} ({', '.join(KINDS)})")
        rate = _number(request, "pages_per_s", 0)
        mib = _number(request, "working_set_mib", 0)
        params = {k: _number(request, k, d) for k, d in
                  (("zipf_s", DEFAULT_ZIPF_S), ("on_s", DEFAULT_ON_S), ("off_s", DEFAULT_OFF_S))
                  if k in request}
        try:
            self.configure(kind, int(rate), int(mib * MIB), **params)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        return self.status()


def _check_config(kind: str, pages_per_s: int, working_set_bytes: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown workload kind {kind!r} ({', '.join(KINDS)})")
    if not 0 <= pages_per_s <= MAX_PAGES_PER_S:
        raise ValueError(f"pages_per_s must be between 0 and {MAX_PAGES_PER_S}")
    if not 0 <= working_set_bytes <= MAX_WORKING_SET_BYTES:
        raise ValueError(f"working set must be between 0 and {MAX_WORKING_SET_BYTES} B")
    if kind != "none" and pages_per_s > 0 and working_set_bytes < PAGE_SIZE:
        raise ValueError("a workload needs a working set of at least one page")


def _number(request: Request, key: str, default: float) -> float:
    value = request.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"{key} must be a finite number")
    try:
        number = float(value)
    except OverflowError:
        raise RequestError(f"{key} above the limit") from None
    if not math.isfinite(number) or number < 0 or number > 1e12:
        raise RequestError(f"{key} must be a finite number >= 0")
    return number
