"""Migration-aware flows from the orchestrator's side, and the client-visible gap.

`migrate_with_flow_move` wraps any migration call (e.g. `MigrationService.migrate`) and tells
the controller where the VM's MAC lives as soon as the migration reports completion, i.e. at
switch-over as seen from the orchestrator. It needs no change to the migration service.

`GapProbe` is the measuring client: it asks a service (the guest agent's TCP port 7070) every
50 ms and records when answers came back; the client-visible gap is the longest stretch
between two answers (`longest_gap`, pure).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol


class FlowMover(Protocol):
    def move(self, mac: str, node: str) -> Any: ...


def migrate_with_flow_move(migrate: Callable[[], dict[str, Any]], mover: FlowMover | None,
                           mac: str, destination: str,
                           clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Run the migration; when it completed, move the VM's flows to the destination.

    A failed migration leaves the VM where it was, so its flows stay too. Without a mover
    (bridge core, or measuring the baseline) this is the plain migration."""
    result = migrate()
    if mover is not None and result.get("status") == "completed":
        started = clock()
        result["flow_move"] = mover.move(mac, destination)
        result["flow_move_ms"] = round((clock() - started) * 1000, 2)
    return result


def longest_gap(answers: Sequence[float], start: float, end: float) -> float:
    """Longest time without an answer within [start, end], in seconds.

    The window's edges count as answers' bounds, so a service dead for the whole window has
    a gap of end - start and one that never stopped answering has the polling interval."""
    points = [start, *sorted(t for t in answers if start <= t <= end), end]
    return max(b - a for a, b in zip(points, points[1:], strict=False))


class GapProbe:
    """Polls `ask` every `interval_s` in a thread; `ask` raises when there is no answer."""

    def __init__(self, ask: Callable[[], object], interval_s: float = 0.05,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ask, self.interval_s, self.clock = ask, interval_s, clock
        self.answers: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="gap-probe")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.ask()
                self.answers.append(self.clock())
            except Exception:  # noqa: BLE001 - any failure is "no answer"
                self.failures += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> GapProbe:
        self.started = self.clock()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.ended = self.clock()

    def gap_s(self) -> float:
        return longest_gap(self.answers, self.started, self.ended)
