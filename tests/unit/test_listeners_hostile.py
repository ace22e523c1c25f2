"""The orchestrator-side listeners under hostile input, over real loopback sockets.

Stateful property tests (hypothesis, derandomized): random interleavings of valid requests
with malformed ones (deep nesting, UTF-16, oversize, binary, partial), slowloris
connections, clients that never read, and floods of idle connections, against the real
servers: the SDN controller's HTTP API, `locate --serve` (LocationServer with the relay's
signatures) and the Prometheus exporter the host agent and `metrics serve` share.
Invariants after every step: a fresh legitimate client is answered within 1 s, the server
holds at most its connection cap, and its buffered bytes stay within the limits.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections import deque
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from prometheus_client import CollectorRegistry, Gauge

from agent.host.bounded import (
    BoundedServer,
    HttpFraming,
    LineFraming,
    http_response,
)
from agent.host.exporter import serve_registry
from orchestrator.edge.control import MAX_UPDATE_LINE, LocationServer
from orchestrator.lab.controller.api import API_FRAMING, LocationRelay, RelayAuth, serve_api

SETTINGS = settings(derandomize=True, deadline=None, max_examples=25,
                    stateful_step_count=8)
FRESH_TIMEOUT_S = 1.0

MALFORMED_KINDS = ("nested", "utf16", "oversize", "binary", "not_json", "huge_number")


def malformed_payload(kind: str, size: int, blob: bytes, limit: int) -> bytes:
    """One hostile request body/line of `kind` (no trailing newline)."""
    if kind == "nested":
        return b"[" * size * 8 + b"]" * size * 8
    if kind == "utf16":
        return json.dumps({"device": "d1", "bs": "b1"}).encode("utf-16")
    if kind == "oversize":
        return b'{"device": "' + b"a" * (limit + size) + b'"}'
    if kind == "binary":
        return blob.replace(b"\n", b"")
    if kind == "huge_number":
        return b'{"device": "d1", "bs": "b1", "at": 1e999999}'
    return b"{'device': nope"


def read_until_closed(sock: socket.socket, timeout_s: float = 3.0) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    return data


class HostileClients(RuleBasedStateMachine):
    """What every listener must survive; subclasses say how to talk to theirs."""

    framing_limit = 0  # the request limit of the server under test

    def __init__(self) -> None:
        super().__init__()
        self.open: deque[socket.socket] = deque()
        self.server: BoundedServer = self.start()

    # --- what a subclass provides --------------------------------------------------------

    def start(self) -> BoundedServer:
        raise NotImplementedError

    def frame(self, payload: bytes) -> bytes:
        """A complete request carrying `payload`."""
        raise NotImplementedError

    def valid_request(self) -> bytes:
        raise NotImplementedError

    def fresh_client_answered(self) -> bool:
        raise NotImplementedError

    def is_error_reply(self, data: bytes) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    # --- rules ---------------------------------------------------------------------------

    def connect(self) -> socket.socket:
        sock = socket.create_connection(self.server.server_address, timeout=2)
        return sock

    def keep(self, sock: socket.socket) -> None:
        self.open.append(sock)
        while len(self.open) > 150:
            self.open.popleft().close()

    @rule()
    def valid(self) -> None:
        with self.connect() as sock:
            sock.sendall(self.valid_request())
            sock.settimeout(2)
            assert sock.recv(65536), "a valid request is answered"

    @rule(kind=st.sampled_from(MALFORMED_KINDS), size=st.integers(1, 3000),
          blob=st.binary(min_size=1, max_size=512))
    def malformed(self, kind: str, size: int, blob: bytes) -> None:
        with self.connect() as sock:
            try:
                sock.sendall(self.frame(malformed_payload(kind, size, blob,
                                                          self.framing_limit)))
            except OSError:
                return  # the server already refused and closed: fine
            reply = read_until_closed(sock)
        assert self.is_error_reply(reply), (kind, reply[:200])

    @rule(blob=st.binary(min_size=1, max_size=256))
    def partial(self, blob: bytes) -> None:
        """Half a request, then silence (a slowloris): kept open."""
        sock = self.connect()
        sock.sendall(self.valid_request()[:8] + blob.replace(b"\n", b""))
        self.keep(sock)

    @rule(count=st.integers(1, 80))
    def idle_flood(self, count: int) -> None:
        for _ in range(count):
            try:
                self.keep(self.connect())
            except OSError:
                break

    @rule(count=st.integers(2, 40))
    def never_reads(self, count: int) -> None:
        """Pipelined valid requests from a client that never reads a reply."""
        sock = self.connect()
        sock.setblocking(False)
        try:
            for _ in range(count):
                sock.send(self.valid_request())
        except OSError:
            pass
        self.keep(sock)

    @rule(count=st.integers(1, 50))
    def hang_up(self, count: int) -> None:
        for _ in range(min(count, len(self.open))):
            self.open.popleft().close()

    # --- invariants ----------------------------------------------------------------------

    @invariant()
    def fresh_client_is_answered_within_a_second(self) -> None:
        started = time.monotonic()
        assert self.fresh_client_answered()
        assert time.monotonic() - started < FRESH_TIMEOUT_S

    @invariant()
    def bounded(self) -> None:
        limits = self.server.limits
        assert self.server.connections() <= limits.max_connections
        per_conn = self.server.framing.max_bytes + limits.recv_chunk + (1 << 20)
        assert self.server.buffered_bytes() <= limits.max_connections * per_conn
        assert self.server._thread is not None and self.server._thread.is_alive()

    def teardown(self) -> None:
        for sock in self.open:
            sock.close()
        self.stop()


class HttpClients(HostileClients):
    path = "/"

    def frame(self, payload: bytes) -> bytes:
        return (f"POST {self.path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(payload)}"
                "\r\n\r\n").encode() + payload

    def is_error_reply(self, data: bytes) -> bool:
        return data.startswith((b"HTTP/1.1 400", b"HTTP/1.1 404", b"HTTP/1.1 405",
                                b"HTTP/1.1 503")) or data == b""

    def http_get(self, path: str) -> int:
        host, port = self.server.server_address
        conn = http.client.HTTPConnection(host, port, timeout=FRESH_TIMEOUT_S)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        finally:
            conn.close()


class FakeController:
    def __init__(self) -> None:
        self.relay = LocationRelay()
        self.locations = self.relay.updates

    def stats(self) -> dict[str, Any]:
        return {"classes": {}, "links": {}}

    def add_node(self, name: str, port: int, mac: str) -> dict[str, Any]:
        return {"name": name}

    def move(self, mac: str, node: str) -> dict[str, Any]:
        return {"mac": mac, "node": node}

    def locate(self, update: dict[str, Any]) -> dict[str, Any]:
        return self.relay.locate(update)

    def locate_endpoint(self) -> dict[str, Any]:
        return self.relay.describe()

    def set_locate_endpoint(self, endpoint: str | None) -> dict[str, Any]:
        return self.relay.set_endpoint(endpoint)


class ControllerApiMachine(HttpClients):
    path = "/locate"
    framing_limit = API_FRAMING.max_body

    def start(self) -> BoundedServer:
        self.api = serve_api(FakeController(), "127.0.0.1", 0)  # type: ignore[arg-type]
        return self.api.server

    def valid_request(self) -> bytes:
        return self.frame(b'{"device": "d1", "bs": "b1"}')

    def fresh_client_answered(self) -> bool:
        return self.http_get("/locate-endpoint") == 200

    def stop(self) -> None:
        self.api.server_close()


class ExporterMachine(HttpClients):
    path = "/metrics"
    framing_limit = 8192

    def start(self) -> BoundedServer:
        registry = CollectorRegistry(auto_describe=False)
        Gauge("edgeiot_test_up", "a gauge", registry=registry).set(1)
        self.exporter = serve_registry(registry, "127.0.0.1", 0)
        return self.exporter.server

    def frame(self, payload: bytes) -> bytes:
        # Hostile bytes as the request head: an exporter takes no bodies.
        return payload + b"\r\n\r\n"

    def valid_request(self) -> bytes:
        return b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"

    def fresh_client_answered(self) -> bool:
        return self.http_get("/metrics") == 200

    def stop(self) -> None:
        self.exporter.server_close()


class FakePlane:
    def clock(self) -> float:
        return 100.0

    def handle(self, update: Any) -> list[dict[str, Any]]:
        return [{"verdict": "stay", "proxy": "p", "result": {}}]


class LocateServeMachine(HostileClients):
    framing_limit = MAX_UPDATE_LINE

    def start(self) -> BoundedServer:
        self.auth = RelayAuth(b"r" * 32)
        self.locate = LocationServer(("127.0.0.1", 0), FakePlane(),  # type: ignore[arg-type]
                                     RelayAuth(self.auth.key))
        self.thread = threading.Thread(target=self.locate.serve_forever, daemon=True)
        self.thread.start()
        return self.locate.listener

    def frame(self, payload: bytes) -> bytes:
        return payload + b"\n"

    def valid_request(self) -> bytes:
        return json.dumps(self.auth.sign({"device": "d1", "bs": "b1"})).encode() + b"\n"

    def is_error_reply(self, data: bytes) -> bool:
        return data == b"" or json.loads(data.splitlines()[0])["ok"] is False

    def fresh_client_answered(self) -> bool:
        with socket.create_connection(self.server.server_address,
                                      timeout=FRESH_TIMEOUT_S) as sock:
            sock.sendall(self.valid_request())
            reply = sock.makefile("rb").readline()
        return bool(json.loads(reply)["ok"])

    def stop(self) -> None:
        self.locate.server_close()
        self.thread.join(timeout=2)


TestControllerApiHostile = SETTINGS(ControllerApiMachine).TestCase
TestExporterHostile = SETTINGS(ExporterMachine).TestCase
TestLocateServeHostile = SETTINGS(LocateServeMachine).TestCase


# --- exact limits and single behaviours ----------------------------------------------------


@pytest.fixture
def echo_server():
    server = BoundedServer(("127.0.0.1", 0), LineFraming(max_bytes=16),
                           lambda line, respond: respond(line + b"\n", False)).start()
    yield server
    server.server_close()


def test_line_limit_is_exact(echo_server):
    with socket.create_connection(echo_server.server_address, timeout=2) as sock:
        sock.sendall(b"a" * 15 + b"\n")  # 16 bytes with the newline: accepted
        assert sock.makefile("rb").readline() == b"a" * 15 + b"\n"
    with socket.create_connection(echo_server.server_address, timeout=2) as sock:
        sock.sendall(b"a" * 16 + b"\n")  # 17: refused, closed
        reply = read_until_closed(sock)
    assert json.loads(reply)["ok"] is False and "longer than 16 bytes" in reply.decode()


def test_slowloris_is_closed_after_the_request_timeout():
    server = BoundedServer(("127.0.0.1", 0), LineFraming(64),
                           lambda line, respond: respond(b"ok\n", False),
                           limits=_limits(request_timeout_s=0.3)).start()
    try:
        with socket.create_connection(server.server_address, timeout=3) as sock:
            started = time.monotonic()
            for _ in range(10):  # a byte every 0.1 s: each recv is "recent", the request is not
                try:
                    sock.sendall(b"x")
                except OSError:
                    break
                time.sleep(0.1)
            assert read_until_closed(sock) == b""
            assert time.monotonic() - started < 1.5
        assert server.stats["timeouts"] == 1
    finally:
        server.server_close()


def test_at_the_cap_the_longest_waiting_connection_makes_room():
    server = BoundedServer(("127.0.0.1", 0), LineFraming(64),
                           lambda line, respond: respond(b"ok\n", False),
                           limits=_limits(max_connections=4)).start()
    try:
        idle = [socket.create_connection(server.server_address) for _ in range(4)]
        time.sleep(0.1)
        with socket.create_connection(server.server_address, timeout=1) as sock:
            sock.sendall(b"ping\n")
            assert sock.makefile("rb").readline() == b"ok\n"
        assert read_until_closed(idle[0], 1) == b""  # the oldest was evicted
        assert server.stats["evicted"] >= 1 and server.connections() <= 4
        for s in idle:
            s.close()
    finally:
        server.server_close()


def test_busy_connections_refuse_a_newcomer_cleanly():
    gate = threading.Event()
    server = BoundedServer(("127.0.0.1", 0), HttpFraming(),
                           lambda req, respond: threading.Thread(
                               target=lambda: (gate.wait(5), respond(
                                   http_response(200, b"{}"), True))).start(),
                           limits=_limits(max_connections=2)).start()
    try:
        busy = [socket.create_connection(server.server_address) for _ in range(2)]
        for s in busy:
            s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        time.sleep(0.2)
        with socket.create_connection(server.server_address, timeout=2) as sock:
            assert read_until_closed(sock).startswith(b"HTTP/1.1 503")
        gate.set()
        assert all(read_until_closed(s).startswith(b"HTTP/1.1 200") for s in busy)
    finally:
        server.server_close()


def test_a_reply_never_taken_closes_the_connection():
    big = b"x" * (8 << 20)
    server = BoundedServer(("127.0.0.1", 0), LineFraming(64),
                           lambda line, respond: respond(big, False),
                           limits=_limits(write_timeout_s=0.3)).start()
    try:
        sock = socket.create_connection(server.server_address)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"give\n")
        time.sleep(0.8)
        assert server.connections() == 0 and server.stats["timeouts"] == 1
        sock.close()
    finally:
        server.server_close()


def _limits(**kwargs: Any) -> Any:
    from agent.host.bounded import Limits
    return Limits(**kwargs)


OUT_OF_FDS_SERVER = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))
from agent.host.bounded import BoundedServer, LineFraming, Limits
server = BoundedServer(("127.0.0.1", 0), LineFraming(64), lambda line, respond: respond(
    b"ok\\n", False), Limits(max_connections=1000)).start()
print(server.server_address[1], flush=True)
time.sleep(60)
"""


def test_out_of_descriptors_neither_spins_nor_locks_a_fresh_client_out():
    import subprocess
    import sys
    from pathlib import Path

    import psutil

    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", OUT_OF_FDS_SERVER], cwd=repo,
                            stdout=subprocess.PIPE)
    clients: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(80)]
        time.sleep(0.5)  # it has met EMFILE by now
        server = psutil.Process(proc.pid)
        before = server.cpu_times()
        time.sleep(1.0)
        after = server.cpu_times()
        assert (after.user + after.system) - (before.user + before.system) < 0.3
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=FRESH_TIMEOUT_S) as sock:
            sock.sendall(b"ping\n")
            assert sock.makefile("rb").readline() == b"ok\n"
        assert time.monotonic() - started < FRESH_TIMEOUT_S
    finally:
        for sock in clients:
            sock.close()
        proc.kill()  # our own child
        proc.wait()


class _BuggyFraming(LineFraming):
    """A framing with a bug: it raises something no framing should on one input."""

    def frame(self, buffer: bytearray) -> tuple[Any, int] | None:
        if buffer.startswith(b"boom"):
            raise RuntimeError("a bug in the loop, not a bad request")
        return super().frame(buffer)


def test_a_bug_in_the_loop_costs_one_connection_and_is_counted():
    server = BoundedServer(("127.0.0.1", 0), _BuggyFraming(64),
                           lambda line, respond: respond(b"ok\n", False)).start()
    try:
        with socket.create_connection(server.server_address, timeout=2) as victim:
            victim.sendall(b"boom\n")
            assert read_until_closed(victim) == b""  # closed, no reply
        deadline = time.monotonic() + 2
        while server.stats["loop_errors"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.stats["loop_errors"] == 1
        with socket.create_connection(server.server_address, timeout=1) as fresh:
            fresh.sendall(b"ping\n")
            assert fresh.recv(16) == b"ok\n"
    finally:
        server.server_close()
