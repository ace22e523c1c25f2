"""The TCP server skeleton the agent's three listeners share: newline-delimited lines in,
bytes out, one `selectors` loop in one daemon thread, total and bounded whatever a peer does.

Why: the control port (JSON requests), the device stream port (frames) and the application
VM's metadata port differ only in what a line means. `LineServer` owns the listener, the
selector, the thread and each connection's buffers; a subclass says what a line means in
`handle_line(conn, line)`, returning the bytes to send back (or None). Handlers run on the
server thread: they must be quick and never block.

Bounds, each counted in `counters` (all peers on the lab segment are suspects):
* a line is at most `max_line` bytes without its newline (exactly: `max_line` is accepted,
  `max_line + 1` is reported once as None and skipped up to the next newline);
* a connection's pending output is at most `max_out` bytes: past half of it the server stops
  reading that connection (a slow reader slows itself down), past all of it the connection
  is closed (`overflow_closed`);
* at most `max_conns` connections: a new one first evicts an untrusted connection (one whose
  peer has not proved who it is) that is idle for `evict_idle_s` or open for `trust_grace_s`
  — the one idle longest — else it gets `refusal()` and is closed (a stranger can keep a
  slot busy only briefly, however chatty it is);
* a connection with no complete line for `idle_timeout_s` is closed (`idle_closed`);
* accept() failing for lack of file descriptors pauses the listener for `accept_backoff_s`
  instead of spinning on a listener that stays readable (`accept_errors`);
* an exception in a handler closes that connection only (`handler_errors`). If the thread
  dies anyway, `alive()` says so and `revive()` starts a new one over the same state (the
  agent's supervisor does that and counts it).
"""

from __future__ import annotations

import errno
import selectors
import socket
import threading
import time

# NOTE: `typing` costs ~0.1 s to import under TCG, so it is imported for type checkers only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

    class Splitter(Protocol):
        def feed(self, data: bytes) -> list[bytes | None]: ...

RECV_BYTES = 65536
ACCEPT_BATCH = 64  # connections accepted per readiness of the listener
FD_SHORTAGE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class LineSplitter:
    """Splits received bytes into non-blank lines of at most `max_line` bytes (newline
    excluded). A longer line is reported once as None, as soon as it is known to be too
    long, and its bytes are skipped up to the next newline. Holds at most `max_line` bytes."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buf = b""
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes | None]:
        parts = (self._buf + data).split(b"\n") if self._buf else data.split(b"\n")
        tail = parts.pop()
        out: list[bytes | None] = []
        for part in parts:
            if self._skipping:  # the end of an over-long line
                self._skipping = False
            elif len(part) > self.max_line:
                out.append(None)
            elif part.strip():
                out.append(part)
        if len(tail) > self.max_line:
            if not self._skipping:
                out.append(None)
            self._skipping, tail = True, b""
        self._buf = tail
        return out


class Conn:
    """One client connection: its socket, its line splitter and the bytes still to send.

    `out` is shared with other threads through `LineServer.push`: touch it only while
    holding `lock`. `trusted` (set by a subclass once the peer proved who it is) spares the
    connection from eviction when the server is full."""

    def __init__(self, sock: socket.socket, lines: Splitter) -> None:
        self.sock = sock
        self.lines = lines
        self.out = b""
        self.closing = False
        self.closed = False  # set (under `lock`) once the server thread is closing it
        self.trusted = False
        self.opened = time.monotonic()
        self.last_line = self.opened  # when the last complete line (or the peer) came
        self.lock = threading.Lock()


class LineServer:
    """Serves host:port from one selector thread (`port=0` picks a free port).

    Subclasses implement `handle_line`; they may override `new_conn` (their own connection
    type or splitter), `handle_lines` (all lines of one read at once), `conn_closed` and
    `refusal` (the line a connection gets when the server is full).
    """

    thread_name = "lines"
    max_line = 64 * 1024
    max_conns = 64
    max_out = 1024 * 1024
    idle_timeout_s = 60.0
    evict_idle_s = 1.0
    trust_grace_s = 5.0
    accept_backoff_s = 0.5
    select_timeout_s = 0.2

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._sel = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conns: dict[int, Conn] = {}  # by id()
        self._paused_until = 0.0  # the listener is unregistered until then (fd shortage)
        self._next_sweep = 0.0
        self.counters = dict.fromkeys(
            ("accepted_conns", "refused_conns", "evicted", "idle_closed", "overflow_closed",
             "too_long", "handler_errors", "accept_errors"), 0)

    # --- what a subclass says -----------------------------------------------------------

    def handle_line(self, conn: Conn, line: bytes | None) -> bytes | None:
        """The reply to one line (None: no reply); `line` is None for an over-long line."""
        raise NotImplementedError

    def handle_lines(self, conn: Conn, lines: list[bytes | None]) -> bytes:
        """The replies to the lines of one read; by default each line's, in order, stopping
        early when the connection is closing or its replies would overflow `max_out`."""
        out = b""
        for line in lines:
            if conn.closing:
                break
            reply = self.handle_line(conn, line)
            if reply:
                out += reply
                if len(out) > self.max_out:
                    break
        return out

    def new_conn(self, sock: socket.socket) -> Conn:
        return Conn(sock, LineSplitter(self.max_line))

    def conn_closed(self, conn: Conn) -> None:
        """Called once per connection, before its socket is closed."""

    def refusal(self) -> bytes:
        """The one line a connection gets when the server is full."""
        return b'{"error":"too many connections"}\n'

    # --- lifecycle ----------------------------------------------------------------------

    def listen(self) -> None:
        """Bind and listen now (`start` does it if it has not been done)."""
        if self._listener is None:
            self._listener = socket.create_server((self.host, self.port), backlog=128)
            self._listener.setblocking(False)
            self._sel.register(self._listener, selectors.EVENT_READ, None)

    @property
    def address(self) -> tuple[str, int]:
        assert self._listener is not None
        host, port = self._listener.getsockname()[:2]
        return host, port

    def start(self) -> None:
        if self._thread is not None:
            return
        self.listen()
        self._start_thread()

    def alive(self) -> bool:
        """False once the server thread died (it never dies by a peer's doing, but a bug)."""
        return self._thread is None or self._thread.is_alive() or self._stop.is_set()

    def revive(self) -> None:
        """Run the loop in a new thread over the same listener and connections."""
        self._start_thread()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self.serve, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        keys = self._sel.get_map()
        if keys is not None:  # None once stopped
            for key in list(keys.values()):
                key.fileobj.close()  # type: ignore[union-attr]
            self._sel.close()
        if self._listener is not None:
            self._listener.close()

    def push(self, conn: Conn, data: bytes) -> bool:
        """Queue bytes for `conn` from any thread (the server thread sends them when the
        socket is writable); False if the connection is closed, closing or backlogged."""
        with conn.lock:
            if conn.closed or conn.closing or len(conn.out) + len(data) > self.max_out:
                return False
            conn.out += data
            try:
                self._sel.modify(conn.sock, self._mask(conn), conn)
            except (KeyError, ValueError, OSError):  # unregistered or closed meanwhile
                conn.out = b""
                return False
        return True

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "conns": len(self._conns),
                "out_bytes": sum(len(c.out) for c in list(self._conns.values()))}

    def serve(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            if self._paused_until and now >= self._paused_until:
                self._resume_listener()
            if now >= self._next_sweep:
                self._sweep_idle(now)
            for key, events in self._sel.select(timeout=self.select_timeout_s):
                if key.data is None:
                    self._accept()
                else:
                    self._guarded_service(key.data, events)

    # --- the loop's steps ---------------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in FD_SHORTAGE:
                    self._pause_listener()
                return
            if len(self._conns) >= self.max_conns and not self._evict_one():
                self._turn_away(sock)
                continue
            self.counters["accepted_conns"] += 1
            sock.setblocking(False)
            conn = self.new_conn(sock)
            self._conns[id(conn)] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _pause_listener(self) -> None:
        """Out of file descriptors: stop watching the listener for a while."""
        self.counters["accept_errors"] += 1
        self._paused_until = time.monotonic() + self.accept_backoff_s
        try:
            self._sel.unregister(self._listener)  # type: ignore[arg-type]
        except (KeyError, ValueError):
            pass

    def _resume_listener(self) -> None:
        self._paused_until = 0.0
        try:
            self._sel.register(self._listener, selectors.EVENT_READ, None)  # type: ignore[arg-type]
        except (KeyError, ValueError):
            pass

    def _turn_away(self, sock: socket.socket) -> None:
        self.counters["refused_conns"] += 1
        try:
            sock.setblocking(False)
            sock.send(self.refusal())
        except OSError:
            pass
        sock.close()

    def _evict_one(self) -> bool:
        """Close the untrusted connection idle longest among those idle for `evict_idle_s`
        or open for `trust_grace_s`; False if there is none."""
        now = time.monotonic()
        idle = [c for c in self._conns.values() if not c.trusted
                and (now - c.last_line >= self.evict_idle_s
                     or now - c.opened >= self.trust_grace_s)]
        if not idle:
            return False
        self.counters["evicted"] += 1
        self._close(min(idle, key=lambda c: c.last_line))
        return True

    def _sweep_idle(self, now: float) -> None:
        self._next_sweep = now + min(1.0, self.idle_timeout_s / 4)
        for conn in [c for c in self._conns.values() if now - c.last_line > self.idle_timeout_s]:
            self.counters["idle_closed"] += 1
            self._close(conn)

    def _guarded_service(self, conn: Conn, events: int) -> None:
        try:
            self._service(conn, events)
        except Exception:  # a handler's bug: that connection goes, the others stay
            self.counters["handler_errors"] += 1
            if not conn.closed:
                self._close(conn)

    def _mask(self, conn: Conn) -> int:
        """Read unless the peer is behind on reading; write while output is pending."""
        reading = 0 if conn.closing or len(conn.out) > self.max_out // 2 else selectors.EVENT_READ
        return reading | (selectors.EVENT_WRITE if conn.out else 0)

    def _service(self, conn: Conn, events: int) -> None:
        # NOTE: handlers run without the connection's lock (they may take other locks);
        # every use of `out` holds it, since other threads `push` to it.
        try:
            if events & selectors.EVENT_READ:
                self._read(conn)
            with conn.lock:
                if conn.out:
                    sent = conn.sock.send(conn.out)
                    conn.out = conn.out[sent:]
        except OSError:
            with conn.lock:
                conn.closing, conn.out = True, b""
        with conn.lock:
            conn.closed = conn.closing and not conn.out
            mask = self._mask(conn)
            if not conn.closed and mask:
                self._sel.modify(conn.sock, mask, conn)
        if conn.closed:
            self._close(conn)

    def _read(self, conn: Conn) -> None:
        data = conn.sock.recv(RECV_BYTES)
        if not data:
            conn.closing = True
            return
        lines = conn.lines.feed(data)
        if not lines:
            return
        conn.last_line = time.monotonic()
        self.counters["too_long"] += lines.count(None)
        replies = self.handle_lines(conn, lines)
        with conn.lock:
            if len(conn.out) + len(replies) > self.max_out:
                self.counters["overflow_closed"] += 1
                conn.closing, conn.out = True, b""
            else:
                conn.out += replies

    def _close(self, conn: Conn) -> None:
        with conn.lock:
            conn.closed = conn.closing = True
            conn.out = b""
        self._conns.pop(id(conn), None)
        self.conn_closed(conn)
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
