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

from .lineserver import Conn, LineServer

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


class ControlServer(LineServer):
    """Serves a `Dispatcher` on host:port from one selector thread; `port=0` picks a free port.

    Binds at construction. A request line longer than `max_line` gets an error and the
    connection is closed once the reply is sent.
    """

    thread_name = "control"

    def __init__(
        self,
        dispatcher: Dispatcher,
        host: str = "0.0.0.0",
        port: int = 7070,
        max_line: int = MAX_LINE_BYTES,
    ) -> None:
        super().__init__(host, port)
        self._dispatcher = dispatcher
        self.max_line = max_line
        self.listen()

    def handle_line(self, conn: Conn, line: bytes | None) -> bytes | None:
        if line is None:
            conn.closing = True
            msg = error(f"request line longer than {self.max_line} bytes")
            return json.dumps(msg).encode() + b"\n"
        return self._dispatcher.handle_line(line) if line.strip() else None
