"""The TCP server skeleton the agent's three listeners share: newline-delimited lines in,
bytes out, one `selectors` loop in one daemon thread.

Why: the control port (JSON requests), the device stream port (frames) and the application
VM's metadata port differ only in what a line means. `LineServer` owns the listener, the
selector, the thread, each connection's read buffer (with a maximum line length) and its
write buffer; a subclass says what a line means in `handle_line(conn, line)`, returning the
bytes to send back (or None). Handlers run on the server thread: they must be quick and
never block.
"""

from __future__ import annotations

import selectors
import socket
import threading

# NOTE: `typing` costs ~0.1 s to import under TCG, so it is imported for type checkers only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class Splitter(Protocol):
        def feed(self, data: bytes) -> list[bytes | None]: ...

RECV_BYTES = 65536


class LineBuffer:
    """Splits received bytes into lines. When the unfinished line grows past `max_line`
    its bytes are dropped and reported as None (what follows still counts as a line)."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes | None]:
        *lines, self._buf = (self._buf + data).split(b"\n")
        out: list[bytes | None] = list(lines)
        if len(self._buf) > self.max_line:
            self._buf = b""
            out.append(None)
        return out


class Conn:
    """One client connection: its socket, its line splitter and the bytes still to send.

    `out` is shared with other threads through `LineServer.push`: touch it only while
    holding `lock`."""

    def __init__(self, sock: socket.socket, lines: Splitter) -> None:
        self.sock = sock
        self.lines = lines
        self.out = b""
        self.closing = False
        self.closed = False  # set (under `lock`) once the server thread is closing it
        self.lock = threading.Lock()


class LineServer:
    """Serves host:port from one selector thread (`port=0` picks a free port).

    Subclasses implement `handle_line`; they may override `new_conn` (their own connection
    type or splitter), `handle_lines` (all lines of one read at once) and `conn_closed`.
    """

    thread_name = "lines"
    max_line = 64 * 1024
    max_conns = 0  # 0: no limit; beyond it a new connection is closed at once

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._sel = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conns = 0

    # --- what a subclass says -----------------------------------------------------------

    def handle_line(self, conn: Conn, line: bytes | None) -> bytes | None:
        """The reply to one line (None: no reply); `line` is None for an over-long line."""
        raise NotImplementedError

    def handle_lines(self, conn: Conn, lines: list[bytes | None]) -> bytes:
        """The replies to the lines of one read; by default each line's, in order."""
        return b"".join(r for line in lines if (r := self.handle_line(conn, line)))

    def new_conn(self, sock: socket.socket) -> Conn:
        return Conn(sock, LineBuffer(self.max_line))

    def conn_closed(self, conn: Conn) -> None:
        """Called once per connection, before its socket is closed."""

    # --- lifecycle ----------------------------------------------------------------------

    def listen(self) -> None:
        """Bind and listen now (`start` does it if it has not been done)."""
        if self._listener is None:
            self._listener = socket.create_server((self.host, self.port))
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

    def push(self, conn: Conn, data: bytes) -> bool:
        """Queue bytes for `conn` from any thread (the server thread sends them when the
        socket is writable); False if the connection is closed or closing."""
        with conn.lock:
            if conn.closed or conn.closing:
                return False
            conn.out += data
            try:
                self._sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
            except (KeyError, ValueError, OSError):  # unregistered or closed meanwhile
                conn.out = b""
                return False
        return True

    def serve(self) -> None:
        while not self._stop.is_set():
            for key, events in self._sel.select(timeout=0.2):
                if key.data is None:
                    self._accept()
                else:
                    self._service(key.data, events)

    # --- the loop's steps ---------------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        if self.max_conns and self._conns >= self.max_conns:
            sock.close()
            return
        self._conns += 1
        sock.setblocking(False)
        self._sel.register(sock, selectors.EVENT_READ, self.new_conn(sock))

    def _service(self, conn: Conn, events: int) -> None:
        # NOTE: handlers run without the connection's lock (they may take other locks);
        # every use of `out` holds it, since other threads `push` to it.
        try:
            if events & selectors.EVENT_READ:
                data = conn.sock.recv(RECV_BYTES)
                if data:
                    replies = self.handle_lines(conn, conn.lines.feed(data))
                    with conn.lock:
                        conn.out += replies
                else:
                    conn.closing = True
            with conn.lock:
                if conn.out:
                    sent = conn.sock.send(conn.out)
                    conn.out = conn.out[sent:]
        except OSError:
            with conn.lock:
                conn.closing, conn.out = True, b""
        with conn.lock:
            conn.closed = conn.closing and not conn.out
            if not conn.closed:
                mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
                self._sel.modify(conn.sock, mask, conn)
        if conn.closed:
            self._close(conn)

    def _close(self, conn: Conn) -> None:
        self._conns -= 1
        self.conn_closed(conn)
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
