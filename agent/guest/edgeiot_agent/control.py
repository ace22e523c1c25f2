"""TCP control server speaking newline-delimited JSON, one request per line.

Why this shape: the host reaches the guest through a plain TCP port (user-mode net's hostfwd
in tests, the lab bridge in real runs), and JSON lines are trivial to speak from Python,
`nc` or a shell. A `Dispatcher` maps `op` names to handlers, so each service registers its
own ops (issue 3's device streams and semantic models add theirs) without touching the
server. The server is a single `selectors` loop in one thread: handlers must be quick and
never block. Bad input gets `{"ok": false, "error": ...}`; the server itself never dies of it.
"""

from __future__ import annotations

import json
import selectors
import socket
import threading

# NOTE: `typing` costs ~0.1 s to import under TCG, so it is imported for type checkers only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Request = dict[str, Any]
    Response = dict[str, Any]
    Handler = Callable[[Request], Response]

MAX_LINE_BYTES = 64 * 1024


class RequestError(Exception):
    """Raised by handlers for a bad request; becomes `{"ok": false, "error": str(exc)}`."""


class Dispatcher:
    """Routes decoded requests to registered handlers by their `op` field."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, op: str, handler: Handler) -> None:
        if op in self._handlers:
            raise ValueError(f"op {op!r} already registered")
        self._handlers[op] = handler

    @property
    def ops(self) -> list[str]:
        return sorted(self._handlers)

    def dispatch(self, request: object) -> Response:
        if not isinstance(request, dict):
            return error("request must be a JSON object")
        op = request.get("op")
        handler = self._handlers.get(op) if isinstance(op, str) else None
        if handler is None:
            return error(f"unknown op {op!r}; known: {', '.join(self.ops)}")
        try:
            response = handler(request)
        except RequestError as exc:
            return error(str(exc))
        except Exception as exc:  # a buggy handler must not take the server down
            return error(f"internal error in {op}: {type(exc).__name__}: {exc}")
        return {"ok": True, **response}

    def handle_line(self, line: bytes) -> bytes:
        """Decode one request line, dispatch it, encode the response line."""
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            response = error(f"malformed JSON: {exc}")
        else:
            response = self.dispatch(request)
        return json.dumps(response, separators=(",", ":")).encode() + b"\n"


def error(message: str) -> Response:
    return {"ok": False, "error": message}


class _Conn:
    """Per-connection buffers."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = b""
        self.outbuf = b""
        self.closing = False


class ControlServer:
    """Serves a `Dispatcher` on host:port from one selector thread; `port=0` picks a free port."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        host: str = "0.0.0.0",
        port: int = 7070,
        max_line: int = MAX_LINE_BYTES,
    ) -> None:
        self._dispatcher = dispatcher
        self._max_line = max_line
        self._sel = selectors.DefaultSelector()
        self._listener = socket.create_server((host, port), reuse_port=False)
        self._listener.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return host, port

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self.serve, name="control", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()

    def serve(self) -> None:
        while not self._stop.is_set():
            for key, events in self._sel.select(timeout=0.2):
                if key.data is None:
                    self._accept()
                else:
                    self._service(key.data, events)

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        self._sel.register(sock, selectors.EVENT_READ, _Conn(sock))

    def _service(self, conn: _Conn, events: int) -> None:
        try:
            if events & selectors.EVENT_READ:
                self._read(conn)
            if events & selectors.EVENT_WRITE or conn.outbuf:
                self._write(conn)
        except OSError:
            conn.closing, conn.outbuf = True, b""
        if conn.closing and not conn.outbuf:
            self._close(conn)
        else:
            mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0)
            self._sel.modify(conn.sock, mask, conn)

    def _read(self, conn: _Conn) -> None:
        data = conn.sock.recv(65536)
        if not data:
            conn.closing = True
            return
        conn.inbuf += data
        while b"\n" in conn.inbuf:
            line, conn.inbuf = conn.inbuf.split(b"\n", 1)
            if line.strip():
                conn.outbuf += self._dispatcher.handle_line(line)
        if len(conn.inbuf) > self._max_line:
            msg = error(f"request line longer than {self._max_line} bytes")
            conn.outbuf += json.dumps(msg).encode() + b"\n"
            conn.inbuf, conn.closing = b"", True

    def _write(self, conn: _Conn) -> None:
        if conn.outbuf:
            sent = conn.sock.send(conn.outbuf)
            conn.outbuf = conn.outbuf[sent:]

    def _close(self, conn: _Conn) -> None:
        self._sel.unregister(conn.sock)
        conn.sock.close()
