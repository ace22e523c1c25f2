"""TCP control server speaking newline-delimited JSON, one request per line, signed.

Why this shape: the host reaches the guest through a plain TCP port (user-mode net's hostfwd
in tests, the lab bridge in real runs), and JSON lines are trivial to speak from Python,
`nc` or a shell. A `Dispatcher` maps `op` names to handlers, so each service registers its
own ops without touching the server. The server is a single `selectors` loop in one thread:
handlers must be quick and never block. Bad input gets `{"ok": false, "error": ...}`; the
server itself never dies of it.

Authentication (wire.py): a connection sends `challenge` and gets a nonce; every op but
the open ones (`ping`, `challenge`) must then carry a proof under the VM's key with a
strictly increasing counter. Without a key (no `edgeiot.key=` on the kernel command line)
the agent is secure by default: every non-open op is refused, unless it was started with
`--insecure` (a developer's laptop), which accepts unsigned requests.
"""

from __future__ import annotations

from . import wire
from .lineserver import Conn, LineServer, LineSplitter

# NOTE: `typing` costs ~0.1 s to import under TCG, so it is imported for type checkers only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable
    from typing import Any

    Request = dict[str, Any]
    Response = dict[str, Any]
    Handler = Callable[[Request], Response]

MAX_LINE_BYTES = wire.MAX_CONTROL_LINE


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
            return error(f"unknown op {str(op)[:40]!r}; known: {', '.join(self.ops)}")
        try:
            response = handler(request)
        except RequestError as exc:
            return error(str(exc))
        except Exception as exc:  # a buggy handler must not take the server down
            return error(f"internal error in {op}: {type(exc).__name__}: {str(exc)[:200]}")
        return {"ok": True, **response}

    def handle_line(self, line: bytes) -> bytes:
        """Decode one request line, dispatch it, encode the response line (unsigned: the
        caller decides whether the request needed a proof)."""
        try:
            request = wire.loads(line)
        except ValueError as exc:
            return encode(error(str(exc)))
        return encode(self.dispatch(request))


def error(message: str) -> Response:
    return {"ok": False, "error": message}


def encode(response: Response) -> bytes:
    try:
        return wire.dumps(response)
    except (TypeError, ValueError, RecursionError) as exc:  # a handler returned non-JSON
        return wire.dumps(error(f"internal error: unencodable reply: {type(exc).__name__}"))


class _ControlConn(Conn):
    """A control connection and its authentication state (the nonce, the last counter)."""

    def __init__(self, sock: socket.socket, max_line: int) -> None:
        super().__init__(sock, LineSplitter(max_line))
        self.nonce = ""
        self.last_n = 0


class ControlServer(LineServer):
    """Serves a `Dispatcher` on host:port from one selector thread; `port=0` picks a free port.

    Binds at construction. `key` is the VM's key (None: no key); `insecure` accepts unsigned
    requests when there is no key. A request line longer than `max_line` gets an error and
    the connection is closed once the reply is sent.
    """

    thread_name = "control"
    max_conns = 64
    max_out = 4 * 1024 * 1024

    def __init__(
        self,
        dispatcher: Dispatcher,
        host: str = "0.0.0.0",
        port: int = wire.CONTROL_PORT,
        max_line: int = MAX_LINE_BYTES,
        key: str | None = None,
        insecure: bool = False,
    ) -> None:
        super().__init__(host, port)
        if key is not None and not wire.is_key(key):
            raise ValueError("a control key is 64 lowercase hex characters")
        self._dispatcher = dispatcher
        self.max_line = max_line
        self.key, self.insecure = key, insecure
        self.auth_refused = 0
        self.listen()

    def new_conn(self, sock: socket.socket) -> _ControlConn:
        return _ControlConn(sock, self.max_line)

    def refusal(self) -> bytes:
        return encode(error("too many connections"))

    def handle_line(self, conn: Conn, line: bytes | None) -> bytes | None:
        if line is None:
            conn.closing = True
            return encode(error(f"request line longer than {self.max_line} bytes"))
        try:
            request = wire.loads(line)
        except ValueError as exc:
            return encode(error(str(exc)))
        if not isinstance(request, dict):
            return encode(error("request must be a JSON object"))
        if request.get("op") == wire.OP_CHALLENGE:  # a fresh nonce; counters restart
            conn.nonce, conn.last_n = wire.new_nonce(), 0  # type: ignore[attr-defined]
            return encode({"ok": True, "nonce": conn.nonce})  # type: ignore[attr-defined]
        refusal = self._authenticate(conn, request)  # type: ignore[arg-type]
        if refusal is not None:
            self.auth_refused += 1
            return encode(error(f"{wire.AUTH_REFUSED}: {refusal}"))
        request.pop("auth", None)
        return encode(self._dispatcher.dispatch(request))

    def _authenticate(self, conn: _ControlConn, request: Request) -> str | None:
        """None if the request may run, else why not."""
        op = request.get("op")
        if isinstance(op, str) and op in wire.OPEN_OPS:
            return None
        if self.key is None:
            return None if self.insecure else (
                "this agent has no key (edgeiot.key= on the kernel command line); "
                "start it with --insecure to accept unsigned requests")
        if not conn.nonce:
            return "send 'challenge' first, then sign each request"
        try:
            conn.last_n = wire.verify_request(self.key, conn.nonce, conn.last_n, request)
        except wire.AuthError as exc:
            return str(exc).removeprefix(wire.AUTH_REFUSED + ": ")
        conn.trusted = True
        return None

    def status(self) -> dict[str, Any]:
        return {"auth_refused": self.auth_refused, "secured": self.key is not None,
                "control": self.stats()}
