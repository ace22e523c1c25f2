"""Metadata out of the proxy: checked against the model's declared schema, then shipped.

Why: the privacy promise is that application VMs get metadata of declared schemas and
nothing else. So every dict a model returns is checked here — exactly the declared fields,
of the declared types — before it is queued; anything else is dropped and counted.

A `MetadataSink` ships it to the application VM over an authenticated, acknowledged link
(wire.py): per connection it says `hello {app, proxy, epoch}`, answers the nonce with
wire.sink_proof under the sink key the orchestrator gave it, learns the next seq the
application VM expects, then sends numbered `meta` lines and reads cumulative `ack`s. It
keeps every line until acked (bounded: the oldest is dropped and counted when full) and,
after a reconnect, resends those the application VM does not have — so a connection reset
loses none and the application VM's seq check drops any duplicate: metadata arrives
exactly once. One daemon thread per sink; a slow or absent application VM never stalls
ingest.
"""

from __future__ import annotations

import collections
import secrets
import select
import socket
import threading

from . import wire
from .lineserver import LineSplitter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

APP_PORT = wire.METADATA_PORT
T = wire.FRAME_KIND


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


class LinkError(OSError):
    """The application VM refused the link or broke the protocol."""


class MetadataSink:
    """Ships metadata to host:port for (`app`, `proxy`) under `key`; never blocks the caller.

    `send` numbers a line and keeps it until the application VM acks it; the thread writes
    what the current connection has not carried yet, in `batch_lines` at a time, and reads
    acks. Counters: `sent` (lines written, resends included), `acked`, `resent`, `dropped`
    (overflow), `connects`, `refused` (handshakes the application VM refused).
    """

    batch_lines = 256

    def __init__(self, host: str, port: int = APP_PORT, key: str = "", app: str = "",
                 proxy: str = "", max_queue: int = 10000, retry_s: float = 0.5,
                 timeout_s: float = 3.0) -> None:
        self.host, self.port = host, port
        self.key, self.app, self.proxy = key, app, proxy
        self.retry_s, self.timeout_s = retry_s, timeout_s
        self.max_queue = max_queue
        self.epoch = secrets.token_hex(wire.EPOCH_HEX_CHARS // 2)
        self._lines: collections.deque[tuple[int, bytes]] = collections.deque()  # unacked
        self._seq = 0  # the last seq given to a line
        self._written = 0  # the last seq the current connection carried
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._stop = False
        self._sock: socket.socket | None = None
        self.sent_bytes = self.sent = self.acked = self.resent = self.dropped = 0
        self.reconnects = self.refused = 0
        self.last_error = ""
        self._thread: threading.Thread | None = None
        self.revive()

    # --- the caller's side --------------------------------------------------------------

    def send(self, meta: dict[str, Any]) -> int:
        """Queue one metadata dict; the size of its line."""
        with self._lock:
            self._seq += 1
            line = wire.meta_line(self._seq, meta)
            self._lines.append((self._seq, line))
            if len(self._lines) > self.max_queue:
                self._lines.popleft()
                self.dropped += 1
        self._poke()
        return len(line)

    def close(self) -> None:
        with self._lock:
            self._stop = True
        self._poke()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._wake_r.close()
        self._wake_w.close()

    def pending(self) -> int:
        """Lines not acked yet."""
        with self._lock:
            return len(self._lines)

    def alive(self) -> bool:
        return self._thread is None or self._thread.is_alive() or self._stop

    def revive(self) -> None:
        self._drop_socket()
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.app}",
                                        daemon=True)
        self._thread.start()

    def status(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "sent": self.sent, "acked": self.acked,
                "sent_bytes": self.sent_bytes, "dropped": self.dropped, "resent": self.resent,
                "pending": self.pending(), "connects": self.reconnects,
                "refused": self.refused, "epoch": self.epoch, "last_error": self.last_error}

    def _poke(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:  # full (the thread is awake anyway) or closed
            pass

    # --- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        splitter = LineSplitter(wire.MAX_META_LINE)
        while not self._stop:
            try:
                if self._sock is None:
                    if not self.pending():
                        self._wait(None, 1.0)
                        continue
                    splitter = LineSplitter(wire.MAX_META_LINE)
                    self._sock = self._connect(splitter)
                more = self._write_batch(self._sock)
                self._wait(self._sock, 0.0 if more else 1.0, splitter)
            except (OSError, ValueError) as exc:
                self.last_error = f"{type(exc).__name__}: {str(exc)[:120]}"
                self._drop_socket()
                self._wait(None, self.retry_s)
        self._drop_socket()

    def _drop_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _wait(self, sock: socket.socket | None, timeout: float,
              splitter: LineSplitter | None = None) -> None:
        """Sleep until a new line, the socket's acks or the timeout; handle the acks."""
        # NOTE: poll, not select: select() fails on descriptors above 1023.
        poller = select.poll()
        try:
            poller.register(self._wake_r, select.POLLIN)
            if sock is not None:
                poller.register(sock, select.POLLIN)
            ready = {fd for fd, _ in poller.poll(timeout * 1000)}
        except (OSError, ValueError):  # closed meanwhile
            return
        if self._wake_r.fileno() in ready:
            try:
                self._wake_r.recv(4096)
            except OSError:
                pass
        if sock is not None and sock.fileno() in ready and splitter is not None:
            data = sock.recv(65536)
            if not data:
                raise LinkError("the application VM closed the link")
            for line in splitter.feed(data):
                self._reply(line)

    def _reply(self, line: bytes | None) -> None:
        frame = wire.loads(line) if line is not None else None
        if not isinstance(frame, dict):
            raise LinkError("malformed reply from the application VM")
        if frame.get(T) == wire.F_ACK and isinstance(frame.get("seq"), int):
            self._acked_upto(frame["seq"])
        elif frame.get(T) in (wire.F_ERROR, wire.F_REFUSED):
            self.last_error = str(frame.get("error"))[:200]
            if frame.get(T) == wire.F_REFUSED:
                raise LinkError(f"refused: {self.last_error}")

    def _acked_upto(self, seq: int) -> None:
        with self._lock:
            while self._lines and self._lines[0][0] <= seq:
                self._lines.popleft()
                self.acked += 1

    def _write_batch(self, sock: socket.socket) -> bool:
        """Write the next lines this connection has not carried; True if more are waiting."""
        with self._lock:
            batch = [(s, line) for s, line in self._lines if s > self._written]
            more = len(batch) > self.batch_lines
            batch = batch[:self.batch_lines]
        if not batch:
            return False
        data = b"".join(line for _, line in batch)
        sock.sendall(data)
        self._written = batch[-1][0]
        self.sent += len(batch)
        self.sent_bytes += len(data)
        return more

    def _connect(self, splitter: LineSplitter) -> socket.socket:
        """Connect and authenticate; the application VM's `next` trims what it has."""
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        try:
            self.reconnects += 1
            sock.sendall(wire.dumps({T: wire.F_HELLO, "app": self.app, "proxy": self.proxy,
                                     "epoch": self.epoch}))
            challenge = self._expect(sock, splitter, wire.F_CHALLENGE)
            nonce = str(challenge.get("nonce", ""))
            proof = wire.sink_proof(self.key, self.app, self.proxy, nonce)
            sock.sendall(wire.dumps({T: wire.F_AUTH, "mac": proof}))
            welcome = self._expect(sock, splitter, wire.F_WELCOME)
            nxt = welcome.get("next")
            if not isinstance(nxt, int) or isinstance(nxt, bool) or nxt < 1:
                raise LinkError("welcome without a valid 'next'")
        except BaseException:
            sock.close()
            raise
        self._acked_upto(nxt - 1)
        with self._lock:
            unsent = [s for s, _ in self._lines]
            self.resent += sum(1 for s in unsent if s <= self._written)
            self._written = nxt - 1 if not unsent else min(unsent) - 1
        return sock

    def _expect(self, sock: socket.socket, splitter: LineSplitter, kind: str) -> dict[str, Any]:
        lines: list[bytes | None] = []
        while not lines:
            data = sock.recv(65536)
            if not data:
                raise LinkError(f"the application VM closed the link before {kind}")
            lines = splitter.feed(data)
        line = lines[0]
        frame = wire.loads(line) if line is not None else None
        if not isinstance(frame, dict) or frame.get(T) != kind:
            if isinstance(frame, dict) and frame.get(T) == wire.F_REFUSED:
                self.refused += 1
            error = frame.get("error") if isinstance(frame, dict) else line
            raise LinkError(f"expected {kind}, got {str(error)[:120]}")
        return frame
