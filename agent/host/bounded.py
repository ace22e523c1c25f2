"""Total, bounded TCP listeners: the host agent's and the orchestrator's servers.

Why this exists: every listener on the lab segment must survive any byte sequence, size,
rate and number of connections (issue 13). The standard library's servers give each
connection a thread that blocks in `readline()`, so a slowloris, a client that never reads,
or a thousand idle sockets take the server down for everyone. Here one selector thread owns
every socket:

  * it accepts and reads without blocking into a per-connection buffer capped at the
    framing's exact request limit; a complete request goes to `dispatch`, which answers
    through `respond` from any thread (a worker pool, or the thread that owns a store);
  * a connection holds no thread while it is slow: a slowloris costs one buffer and one
    file descriptor, and is closed when its request is not complete `request_timeout_s`
    after it began (or after the previous reply);
  * at the connection cap the connection that has waited longest for its request is closed
    to make room, so idle floods cannot lock a fresh client out; when every connection is
    busy being answered, the newcomer gets the framing's clean refusal;
  * replies are written without blocking, one at a time per connection (no read while a
    reply is pending: a client that never reads cannot grow any buffer), and a reply not
    taken within `write_timeout_s` closes the connection;
  * a malformed request gets one error line (or HTTP 400) and its connection is closed;
    running out of file descriptors pauses accepting instead of spinning.

Stdlib only: the fog_node playbook copies `agent/host/` alone onto real hosts.
"""

from __future__ import annotations

import errno
import json
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

Respond = Callable[[bytes, bool], None]
"""respond(reply bytes, close after writing)."""
Dispatch = Callable[[Any, Respond], None]


class BadRequest(Exception):
    """The bytes received are no request of this protocol; the message is one line."""


@dataclass(frozen=True)
class Limits:
    max_connections: int = 64
    request_timeout_s: float = 10.0  # a request must be complete this long after it began
    write_timeout_s: float = 5.0  # a reply must be taken by the client this fast
    recv_chunk: int = 16384


class Framing(Protocol):
    """How requests are cut out of the byte stream, and what an error looks like."""

    @property
    def max_bytes(self) -> int: ...

    def frame(self, buffer: bytearray) -> tuple[Any, int] | None:
        """(request, bytes consumed) when `buffer` starts with a complete request, None
        when more bytes are needed; BadRequest when it never will be one."""

    def error(self, message: str) -> bytes: ...

    def busy(self) -> bytes: ...


@dataclass(frozen=True)
class LineFraming:
    """One request per line; a line including its newline is at most `max_bytes`."""

    max_bytes: int = 65536

    def frame(self, buffer: bytearray) -> tuple[Any, int] | None:
        end = buffer.find(b"\n", 0, self.max_bytes)
        if end < 0:
            if len(buffer) >= self.max_bytes:
                raise BadRequest(f"line longer than {self.max_bytes} bytes")
            return None
        return bytes(buffer[:end]).rstrip(b"\r"), end + 1

    def error(self, message: str) -> bytes:
        return json.dumps({"ok": False, "error": message}).encode() + b"\n"

    def busy(self) -> bytes:
        return self.error("busy: too many connections")


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


HTTP_METHODS = frozenset({"GET", "POST", "HEAD"})
STATUS_TEXT = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
               413: "Payload Too Large", 500: "Internal Server Error",
               503: "Service Unavailable"}


def http_response(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    """A complete HTTP/1.1 response; every connection closes after one (no keep-alive)."""
    head = (f"HTTP/1.1 {status} {STATUS_TEXT.get(status, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("ascii") + body


@dataclass(frozen=True)
class HttpFraming:
    """HTTP/1.x requests with a Content-Length body (no chunked uploads: nobody sends
    them here). `max_bytes` bounds the head, `max_body` the body."""

    max_bytes: int = 8192
    max_body: int = 65536
    max_headers: int = 64

    def frame(self, buffer: bytearray) -> tuple[Any, int] | None:
        end = buffer.find(b"\r\n\r\n", 0, self.max_bytes)
        if end < 0:
            if len(buffer) >= self.max_bytes:
                raise BadRequest(f"request head longer than {self.max_bytes} bytes")
            return None
        method, path, headers = self._head(bytes(buffer[:end]))
        length = self._length(headers)
        start = end + 4
        if len(buffer) < start + length:
            return None
        body = bytes(buffer[start:start + length])
        return HttpRequest(method, path, headers, body), start + length

    def _head(self, head: bytes) -> tuple[str, str, dict[str, str]]:
        try:
            text = head.decode("ascii")
        except UnicodeDecodeError:
            raise BadRequest("request head is not ASCII") from None
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or parts[0] not in HTTP_METHODS or not parts[2].startswith("HTTP/1."):
            raise BadRequest("malformed request line")
        if not parts[1].startswith("/") or not parts[1].isprintable():
            raise BadRequest("malformed request path")
        if len(lines) - 1 > self.max_headers:
            raise BadRequest(f"more than {self.max_headers} header lines")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise BadRequest("malformed header line")
            headers[name.lower()] = value.strip()
        return parts[0], parts[1], headers

    def _length(self, headers: dict[str, str]) -> int:
        if "transfer-encoding" in headers:
            raise BadRequest("Transfer-Encoding is not accepted: send Content-Length")
        text = headers.get("content-length", "0")
        if not text.isdigit() or len(text) > 12:
            raise BadRequest("malformed Content-Length")
        if int(text) > self.max_body:
            raise BadRequest(f"body longer than {self.max_body} bytes")
        return int(text)

    def error(self, message: str) -> bytes:
        return http_response(400, json.dumps({"error": message}).encode())

    def busy(self) -> bytes:
        return http_response(503, b'{"error": "busy: too many connections"}')


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    began: float  # when the request being read began (accept, or the last reply)
    buffer: bytearray = field(default_factory=bytearray)
    state: str = "reading"  # reading | handling | writing
    out: memoryview = field(default_factory=lambda: memoryview(b""))
    close_after: bool = False
    write_deadline: float = 0.0


ACCEPT_PAUSE_S = 0.1
LOOP_ERROR_PAUSE_S = 0.05
_FD_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class BoundedServer:
    """A listener whose every connection is bounded in bytes, time and number."""

    def __init__(self, address: tuple[str, int], framing: Framing, dispatch: Dispatch,
                 limits: Limits = Limits(), name: str = "bounded",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.framing, self.dispatch, self.limits, self.clock = framing, dispatch, limits, clock
        self.name = name
        self.listener = socket.create_server(address, backlog=128)
        self.listener.setblocking(False)
        self.server_address: tuple[str, int] = self.listener.getsockname()[:2]
        self.stats = {"accepted": 0, "evicted": 0, "refused": 0, "bad_requests": 0,
                      "timeouts": 0, "handler_errors": 0, "loop_errors": 0}
        self._conns: set[_Conn] = set()
        self._replies: deque[tuple[_Conn, bytes, bool]] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.listener, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._accept_resume = 0.0
        self._thread: threading.Thread | None = None

    # --- life cycle -------------------------------------------------------------------

    def start(self) -> BoundedServer:
        thread = threading.Thread(target=self._run, daemon=True, name=self.name)
        thread.start()
        self._thread = thread
        return self

    def shutdown(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def server_close(self) -> None:
        self.shutdown()
        for conn in list(self._conns):
            self._close(conn)
        for sock in (self.listener, self._wake_r, self._wake_w):
            sock.close()
        self._sel.close()

    def connections(self) -> int:
        return len(self._conns)

    def buffered_bytes(self) -> int:
        """Bytes held for all connections (requests read, replies not yet taken): what the
        limits bound, exposed so tests and status can check it."""
        conns = list(self._conns)
        return sum(len(c.buffer) + len(c.out) for c in conns)

    # --- called from any thread -------------------------------------------------------

    def _responder(self, conn: _Conn) -> Respond:
        answered = threading.Event()

        def respond(data: bytes, close: bool = False) -> None:
            if answered.is_set():
                return  # one reply per request
            answered.set()
            with self._lock:
                self._replies.append((conn, data, close))
            self._wake()
        return respond

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # already awake (buffer full) or closed

    # --- the loop ---------------------------------------------------------------------

    def _run(self) -> None:
        """The loop, supervised: a bug in one step closes the connection it was serving
        (or, outside any connection, pauses briefly) and is counted in `loop_errors`;
        the listener itself keeps serving everyone else."""
        while not self._stop.is_set():
            try:
                for key, events in self._sel.select(self._timeout()):
                    self._event(key, events)
                self._take_replies()
                self._expire()
            except Exception:  # noqa: BLE001 - the loop must outlive any bug
                self.stats["loop_errors"] += 1
                self._stop.wait(LOOP_ERROR_PAUSE_S)  # never a hot spin on a persistent bug

    def _event(self, key: selectors.SelectorKey, events: int) -> None:
        try:
            if key.data == "accept":
                self._accept()
            elif key.data == "wake":
                self._drain_wake()
            elif events & selectors.EVENT_READ:
                self._read(key.data)
            elif events & selectors.EVENT_WRITE:
                self._write(key.data)
        except Exception:  # noqa: BLE001 - costs this connection only
            if not isinstance(key.data, _Conn):
                raise
            self.stats["loop_errors"] += 1
            self._close(key.data)

    def _timeout(self) -> float:
        now, soonest = self.clock(), 0.5
        for conn in self._conns:
            due = (conn.began + self.limits.request_timeout_s if conn.state == "reading"
                   else conn.write_deadline if conn.state == "writing" else now + 0.5)
            soonest = min(soonest, due - now)
        if self._accept_resume:
            soonest = min(soonest, self._accept_resume - now)
        return max(0.0, soonest)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno in _FD_ERRORS and not self._evict():
                self._sel.unregister(self.listener)  # out of descriptors: pause, no spin
                self._accept_resume = self.clock() + ACCEPT_PAUSE_S
            return
        sock.setblocking(False)
        if len(self._conns) >= self.limits.max_connections and not self._evict():
            self.stats["refused"] += 1
            _send_and_close(sock, self.framing.busy())
            return
        self.stats["accepted"] += 1
        conn = _Conn(sock, self.clock())
        self._conns.add(conn)
        self._sel.register(sock, selectors.EVENT_READ, conn)

    def _evict(self) -> bool:
        """Close the connection that has waited longest for its request, if any waits."""
        waiting = [c for c in self._conns if c.state == "reading"]
        if not waiting:
            return False
        self.stats["evicted"] += 1
        self._close(min(waiting, key=lambda c: c.began))
        return True

    def _read(self, conn: _Conn) -> None:
        room = self.framing.max_bytes - len(conn.buffer) + 1
        if isinstance(self.framing, HttpFraming):
            room += self.framing.max_body + 4
        try:
            data = conn.sock.recv(max(1, min(self.limits.recv_chunk, room)))
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        conn.buffer += data
        self._next_request(conn)

    def _next_request(self, conn: _Conn) -> None:
        """Frame and dispatch one request if the buffer holds one."""
        try:
            framed = self.framing.frame(conn.buffer)
        except BadRequest as exc:
            self.stats["bad_requests"] += 1
            self._reply(conn, self.framing.error(str(exc)), close=True)
            return
        if framed is None:
            return
        request, used = framed
        del conn.buffer[:used]
        conn.state = "handling"
        self._sel.unregister(conn.sock)  # no reading while this request is answered
        respond = self._responder(conn)
        try:
            self.dispatch(request, respond)
        except BadRequest as exc:
            self.stats["bad_requests"] += 1
            respond(self.framing.error(str(exc)), True)
        except Exception as exc:  # noqa: BLE001 - a server answers, it never dies
            self.stats["handler_errors"] += 1
            respond(self.framing.error(f"internal error: {type(exc).__name__}"), True)

    def _take_replies(self) -> None:
        with self._lock:
            replies, self._replies = self._replies, deque()
        for conn, data, close in replies:
            if conn in self._conns and conn.state == "handling":
                self._reply(conn, data, close)

    def _reply(self, conn: _Conn, data: bytes, close: bool) -> None:
        if conn.state == "reading":
            self._sel.unregister(conn.sock)
        conn.state, conn.out, conn.close_after = "writing", memoryview(data), close
        conn.write_deadline = self.clock() + self.limits.write_timeout_s
        self._sel.register(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if conn.out:
            return
        if conn.close_after:
            self._close(conn)
            return
        conn.state, conn.began = "reading", self.clock()
        self._sel.modify(conn.sock, selectors.EVENT_READ, conn)
        if conn.buffer:
            self._next_request(conn)  # a pipelined request already arrived

    def _expire(self) -> None:
        now = self.clock()
        if self._accept_resume and now >= self._accept_resume:
            self._accept_resume = 0.0
            self._sel.register(self.listener, selectors.EVENT_READ, "accept")
        for conn in list(self._conns):
            late = ((conn.state == "reading"
                     and now > conn.began + self.limits.request_timeout_s)
                    or (conn.state == "writing" and now > conn.write_deadline))
            if late:
                self.stats["timeouts"] += 1
                self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if conn not in self._conns:
            return
        self._conns.discard(conn)
        if conn.state != "handling":
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        conn.sock.close()


def _send_and_close(sock: socket.socket, data: bytes) -> None:
    """Best effort, never blocking: a refusal is a courtesy."""
    try:
        sock.send(data)
    except OSError:
        pass
    sock.close()
