"""A bounded ring of recent raw records, kept in the proxy VM's memory.

Why: the proxy keeps recent raw data (for models that look back, and because the paper's
proxy VM does), and the size of what it writes per second is what makes the guest's
dirty-page rate follow r_data: every appended byte lands on the next page of one
preallocated bytearray, so r_data bytes/s dirty about r_data/4096 pages/s until the ring
wraps. The ring never grows, so memory use is fixed from boot.
"""

from __future__ import annotations

PAGE = 4096


class RawBuffer:
    """Fixed-capacity byte ring; `append` overwrites the oldest bytes."""

    def __init__(self, capacity: int = 4 * 1024 * 1024) -> None:
        if capacity < PAGE:
            raise ValueError("capacity must be at least one page")
        self.capacity = capacity
        self._ring = bytearray(capacity)
        self._pos = 0
        self.total_bytes = 0
        self.records = 0

    def append(self, data: bytes) -> None:
        data = data[-self.capacity:]
        end = self._pos + len(data)
        if end <= self.capacity:
            self._ring[self._pos:end] = data
        else:
            first = self.capacity - self._pos
            self._ring[self._pos:] = data[:first]
            self._ring[:end - self.capacity] = data[first:]
        self._pos = end % self.capacity
        self.total_bytes += len(data)
        self.records += 1

    def recent(self, n: int) -> bytes:
        """The last n bytes written (at most the capacity)."""
        n = min(n, self.capacity, self.total_bytes)
        start = (self._pos - n) % self.capacity
        if start + n <= self.capacity:
            return bytes(self._ring[start:start + n])
        return bytes(self._ring[start:]) + bytes(self._ring[:self._pos])

    def status(self) -> dict[str, int]:
        return {"capacity": self.capacity, "total_bytes": self.total_bytes,
                "records": self.records}
