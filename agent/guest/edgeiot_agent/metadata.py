"""Metadata out of the proxy: checked against the model's declared schema, then shipped.

Why: the privacy promise is that application VMs get metadata of declared schemas and
nothing else. So every dict a model returns is checked here — exactly the declared fields,
of the declared types — before it is queued; anything else is dropped and counted. A
`MetadataSink` ships envelopes `{"app", "src", "m"}` as JSON lines to the application VM
from its own thread, reconnecting as needed, with a bounded queue (oldest dropped first),
so a slow or absent application VM never stalls ingest.
"""

from __future__ import annotations

import collections
import json
import socket
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

APP_PORT = 7072


class SchemaError(ValueError):
    """Model output that does not match its declared schema."""


def check(meta: object, schema: dict[str, type]) -> dict[str, Any]:
    """`meta` if it has exactly the schema's fields with the schema's types."""
    if not isinstance(meta, dict) or set(meta) != set(schema):
        raise SchemaError(f"fields {sorted(meta) if isinstance(meta, dict) else meta!r} "
                          f"!= {sorted(schema)}")
    for name, kind in schema.items():
        value = meta[name]
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              if kind is float else type(value) is kind)
        if not ok:
            raise SchemaError(f"{name} must be {kind.__name__}")
    return meta


def envelope(app: str, src: str, meta: dict[str, Any]) -> bytes:
    return json.dumps({"app": app, "src": src, "m": meta}, separators=(",", ":")).encode() + b"\n"


class MetadataSink:
    """Ships lines to host:port from a daemon thread; never blocks the caller.

    Lines move from the bounded queue (where an overflow drops the oldest) to a batch of
    at most `batch_lines` owned by the shipping thread, so an overflow during a send never
    drops a line of the batch, nor a newer line in its place. A line counts as sent once
    the socket took all its bytes; after a failed or partial send only the lines not
    wholly taken are sent again, on a new connection (the application VM drops the torn
    line the old connection ended with), so no metadata line arrives twice.
    """

    batch_lines = 256

    def __init__(self, host: str, port: int = APP_PORT, max_queue: int = 10000,
                 retry_s: float = 0.5) -> None:
        self.host, self.port = host, port
        self.retry_s = retry_s
        self._queue: collections.deque[bytes] = collections.deque(maxlen=max_queue)
        self._batch: list[bytes] = []  # taken from the queue, not wholly sent yet
        self._wake = threading.Condition()
        self._stop = False
        self.sent_bytes = self.sent = self.dropped = self.reconnects = 0
        self._thread = threading.Thread(target=self._run, name=f"sink-{host}", daemon=True)
        self._thread.start()

    def send(self, line: bytes) -> None:
        with self._wake:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
            self._queue.append(line)
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(timeout=2)

    def pending(self) -> int:
        with self._wake:
            return len(self._queue) + len(self._batch)

    def _connect(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=3)

    def _run(self) -> None:
        sock: socket.socket | None = None
        while True:
            with self._wake:
                while not self._queue and not self._batch and not self._stop:
                    self._wake.wait(1.0)
                if self._stop:
                    break
                while self._queue and len(self._batch) < self.batch_lines:
                    self._batch.append(self._queue.popleft())
                data = b"".join(self._batch)
            taken, failed = 0, False
            try:
                if sock is None:
                    sock = self._connect()
                    self.reconnects += 1
                view = memoryview(data)
                while taken < len(data):
                    taken += sock.send(view[taken:])
            except OSError:
                failed = True
            self._done(taken)
            if failed:
                if sock is not None:
                    sock.close()
                sock = None
                with self._wake:
                    self._wake.wait(self.retry_s)
        if sock is not None:
            sock.close()

    def _done(self, taken: int) -> None:
        """Forget the batch's lines whose bytes are all within the first `taken` bytes."""
        with self._wake:
            count = 0
            for line in self._batch:
                if len(line) > taken:
                    break
                taken -= len(line)
                count += 1
                self.sent_bytes += len(line)
            del self._batch[:count]
            self.sent += count

    def status(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "sent": self.sent,
                "sent_bytes": self.sent_bytes, "dropped": self.dropped,
                "pending": self.pending(), "connects": self.reconnects}
