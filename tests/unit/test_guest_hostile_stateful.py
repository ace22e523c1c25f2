"""Stateful property tests: random interleavings of legitimate traffic and hostile clients
against each of the guest's three listeners, over real loopback sockets.

Each machine starts the real server on port 0 and mixes, in an order hypothesis chooses:
valid signed ops or an authenticated device's records or a sink's metadata; malformed lines
(deep nesting, UTF-16, oversize, partial, binary, NaN, huge integers); impostors (unsigned
ops, replayed requests, foreign hellos and proofs, forged metadata); clients that never
read; many idle connections; cut links. Invariants after every step: a fresh client is
answered within 1 s, the server thread is alive, pending output is bounded. At the end: the
legitimate stream arrived exactly once (accepted == sent, chains equal; metadata in order,
no duplicate), and every refusal was counted exactly.

Derandomized (a fixed example sequence), so a failure reproduces and the suite's time is
stable.
"""

from __future__ import annotations

import json
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agent.devices.emulator import Device
from agent.guest.edgeiot_agent import wire
from agent.guest.edgeiot_agent.app import Agent, AgentConfig
from agent.guest.edgeiot_agent.appvm import AppVmService
from agent.guest.edgeiot_agent.lineserver import LineServer
from agent.guest.edgeiot_agent.metadata import MetadataSink
from agent.guest.edgeiot_agent.streams import StreamService
from tests.unit.relay import Relay

KEY = wire.new_key()
FAST = settings(derandomize=True, max_examples=20, stateful_step_count=25, deadline=None)
MAX_HELD = 12  # idle connections a machine keeps open at once


def malformed(max_line: int) -> list[bytes]:
    """Lines no listener may die of (each a single line unless it says otherwise)."""
    return [
        b"[" * min(max_line - 1, 20000) + b"\n",  # RecursionError in json
        b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"\n",
        '{"t":"hello","dev":"d","op":"ping"}'.encode("utf-16") + b"\n",
        '{"op":"status"}'.encode("utf-32") + b"\n",
        b"x" * (max_line + 1) + b"\n",  # one byte over the limit
        b"y" * (3 * max_line),  # over the limit and never ends
        b'{"op":"ping"',  # partial: no newline
        bytes(b for b in range(256) if b != 10) + b"\n",  # binary
        b'{"op":"dirty","pages_per_s":NaN,"t":"rec","seq":1,"ts":NaN}\n',
        b'{"op":"dirty","seq":' + b"9" * 5000 + b"}\n",  # beyond int's digit limit
        b'{"op":"dirty","pages_per_s":' + b"9" * 4000 + b',"t":"rec","seq":'
        + b"9" * 4000 + b',"ts":1,"v":{}}\n',  # a huge int that parses
        b"\xff\xfe\xfd\n", b"[]\n", b"null\n", b'"text"\n', b"\n\n\r\n",
        b'{"t":"rec","seq":1,"ts":0,"v":' + b"[" * 4000 + b"]" * 4000 + b"}\n",
    ]


def answered(address: tuple[str, int], hello: bytes, expect: str, within: float = 1.0) -> None:
    """A fresh client's request is answered within `within` seconds (a full server may
    first refuse it; an idle stranger is then evicted and a retry gets in)."""
    deadline = time.monotonic() + within
    last = b""
    while time.monotonic() < deadline:
        with socket.create_connection(address, timeout=within) as sock:
            sock.sendall(hello)
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                last = sock.makefile("rb").readline()
            except OSError:
                last = b""
        if expect.encode() in last:
            return
        time.sleep(0.05)
    raise AssertionError(f"no answer within {within} s: {last[:120]!r}")


class Hostile(RuleBasedStateMachine):
    """What every machine does to its server: garbage, idle crowds, clients that never
    read. A subclass sets `server`, `max_line`, `fresh` (hello line, expected text)."""

    server: LineServer
    max_line: int
    fresh: tuple[bytes, str]

    def __init__(self) -> None:
        super().__init__()
        self.held: list[socket.socket] = []

    def hold(self, sock: socket.socket) -> None:
        self.held.append(sock)
        while len(self.held) > MAX_HELD:
            self.held.pop(0).close()

    @rule(i=st.integers(0, 16), keep=st.booleans())
    def garbage(self, i: int, keep: bool) -> None:
        lines = malformed(self.max_line)
        payload = lines[i % len(lines)]
        sock = socket.create_connection(self.server.address, timeout=2)
        try:
            sock.sendall(payload)
            if payload.endswith(b"\n") and payload.strip():  # a line: wait until handled
                sock.recv(1)
        except OSError:  # the server may hang up on it at once
            pass
        self.handled(payload)
        if keep:
            self.hold(sock)
        else:
            sock.close()

    @rule(n=st.integers(1, 20))
    def crowd(self, n: int) -> None:
        for _ in range(n):
            try:
                self.hold(socket.create_connection(self.server.address, timeout=2))
            except OSError:
                pass

    @rule(n=st.integers(1, 8))
    def release_crowd(self, n: int) -> None:
        for _ in range(min(n, len(self.held))):
            self.held.pop().close()

    @invariant()
    def fresh_client_is_answered(self) -> None:
        answered(self.server.address, *self.fresh)

    @invariant()
    def alive_and_bounded(self) -> None:
        assert self.server.alive() and self.server._thread is not None
        assert self.server._thread.is_alive()
        for conn in list(self.server._conns.values()):
            assert len(conn.out) <= 2 * self.server.max_out

    def handled(self, payload: bytes) -> None:
        """A garbage payload was handled (a machine counts what it expects of it)."""

    def never_reads(self, payload: bytes) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(2)
        sock.connect(self.server.address)
        try:
            sock.sendall(payload)
        except OSError:
            pass
        self.hold(sock)

    def teardown(self) -> None:
        for sock in self.held:
            sock.close()


# --- the control port ---------------------------------------------------------------------------

class ControlMachine(Hostile):
    """The agent's control port, signed with the VM's key."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="edgeiot-ctl-"))
        (self.tmp / "boot_id").write_text("b\n")
        (self.tmp / "meminfo").write_text("MemTotal: 131072 kB\nMemAvailable: 90000 kB\n")
        (self.tmp / "cmdline").write_text(f"{wire.KEY_CMDLINE}={KEY}\n")
        self.agent = Agent(AgentConfig(
            host="127.0.0.1", port=0, name="m", boot_id_path=str(self.tmp / "boot_id"),
            meminfo_path=str(self.tmp / "meminfo"), uptime_path=str(self.tmp / "up"),
            cmdline_path=str(self.tmp / "cmdline")))
        self.server = self.agent.server
        self.server.max_out, self.server.max_conns = 64 * 1024, 24
        self.server.evict_idle_s = 0.2
        self.max_line = self.server.max_line
        self.fresh = (b'{"op":"ping"}\n', '"pong":true')
        self.agent.start()
        self.client = wire.ControlClient(*self.server.address, key=KEY)
        self.refused = 0
        self.captured: dict[str, Any] | None = None

    def handled(self, payload: bytes) -> None:
        """A line that is still a JSON object asking for a real op is an unsigned op."""
        try:
            request = wire.loads(payload.rstrip(b"\n"))
        except ValueError:
            return
        if isinstance(request, dict) and request.get("op") not in wire.OPEN_OPS \
                and len(payload) <= self.max_line:
            self.refused += 1

    @rule(pages=st.integers(0, 2000), mib=st.integers(0, 4))
    def signed_ops(self, pages: int, mib: int) -> None:
        assert self.client.call(wire.OP_PING)["ok"] is True
        status = self.client.call(wire.OP_STATUS)
        assert status["ok"] is True and status["auth_refused"] == self.refused
        reply = self.client.call(wire.OP_DIRTY, pages_per_s=pages if mib else 0,
                                 working_set_mib=mib)
        assert reply["ok"] is True, reply
        self.captured = wire.sign_request(KEY, self.client.nonce, self.client.n,
                                          {"op": wire.OP_DIRTY, "pages_per_s": 0})

    @rule(op=st.sampled_from([wire.OP_STATUS, wire.OP_DIRTY, wire.OP_DEVICE_REGISTER,
                              "nonsense"]), forged=st.booleans())
    def impostor(self, op: str, forged: bool) -> None:
        with wire.ControlClient(*self.server.address, key=wire.new_key() if forged else None,
                                timeout_s=2) as stranger:
            reply = stranger.call(op, pages_per_s=100000, working_set_mib=60)
        assert reply["ok"] is False and reply["error"].startswith(wire.AUTH_REFUSED)
        self.refused += 1

    @precondition(lambda self: self.captured is not None)
    @rule(same_connection=st.booleans())
    def replay(self, same_connection: bool) -> None:
        assert self.captured is not None
        if same_connection:
            reply = self.client.exchange(self.captured)
        else:
            with wire.ControlClient(*self.server.address, key=KEY, timeout_s=2) as other:
                other.call(wire.OP_PING)
                other.exchange({"op": wire.OP_CHALLENGE})
                reply = other.exchange(self.captured)
        assert reply["ok"] is False and reply["error"].startswith(wire.AUTH_REFUSED)
        self.refused += 1

    @rule(n=st.integers(500, 6000))
    def slow_reader(self, n: int) -> None:
        self.never_reads(b'{"op":"challenge"}\n' * n)  # 70 bytes of reply per 19 sent

    def teardown(self) -> None:
        super().teardown()
        self.client.close()
        self.agent.stop()
        assert self.agent.restarts == {}


TestControlHostile = ControlMachine.TestCase
TestControlHostile.settings = FAST


# --- the device stream port ----------------------------------------------------------------------

class StreamMachine(Hostile):
    """A proxy with one real sensor and one real actuator, both authenticated."""

    def __init__(self) -> None:
        super().__init__()
        self.server = self.svc = StreamService("px", "127.0.0.1", 0)
        self.svc.max_conns, self.svc.evict_idle_s = 32, 0.2
        self.max_line = self.svc.max_line
        self.fresh = (b'{"t":"hello","dev":"hr"}\n', '"t":"challenge"')
        self.svc.start()
        self.svc._op_register({"devices": [
            {"id": "hr", "type": "heart-rate", "user": "u", "key": KEY},
            {"id": "sw", "type": "switch", "user": "u", "role": "actuator", "key": KEY}]})
        self.commands: list[Any] = []
        self.sensor = Device("hr", lambda: self.svc.address, key=KEY)
        self.actuator = Device("sw", lambda: self.svc.address, key=KEY,
                               on_command=lambda _d, cmd: self.commands.append(cmd))
        self.sensor.start()
        self.actuator.start()
        self.sent_cmds = 0
        self.refused = 0

    @rule(n=st.integers(1, 60))
    def records(self, n: int) -> None:
        for _ in range(n):
            self.sensor.emit(round(time.time(), 3), {"bpm": 70})

    @rule()
    def cut(self) -> None:
        with self.sensor.lock:
            self.sensor._drop_socket()

    @rule()
    def command(self) -> None:
        deadline = time.monotonic() + 3
        while self.svc.core.devices["sw"].conn is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.svc._op_actuate({"device": "sw", "command": {"n": self.sent_cmds}})
        self.sent_cmds += 1

    @rule(dev=st.sampled_from(["hr", "sw", "nobody"]), mode=st.sampled_from(
        ["wrong-key", "records-first", "replayed-proof", "auth-only"]))
    def impostor(self, dev: str, mode: str) -> None:
        with socket.create_connection(self.svc.address, timeout=2) as sock:
            reader = sock.makefile("rb")
            if mode == "auth-only":
                sock.sendall(wire.dumps({"t": "auth", "dev": dev, "mac": "0" * 64}))
                assert b"refused" in reader.readline()
                self.refused += 1
                return
            sock.sendall(wire.dumps({"t": "hello", "dev": dev}))
            challenge = json.loads(reader.readline())
            if dev == "nobody":
                assert challenge["t"] == "refused"
                self.refused += 1
                return
            if mode == "records-first":
                sock.sendall(wire.record_line(10**6, 1.0, {"bpm": 1}) + b"\n")
                assert json.loads(reader.readline())["t"] == "error"
            key = wire.new_key() if mode != "replayed-proof" else KEY
            nonce = challenge["nonce"] if mode != "replayed-proof" else "ab" * 16
            sock.sendall(wire.dumps({"t": "auth", "dev": dev,
                                     "mac": wire.device_proof(key, dev, nonce)}))
            assert json.loads(reader.readline())["t"] == "refused"
            self.refused += 1

    @rule(n=st.integers(100, 3000))
    def slow_reader(self, n: int) -> None:
        self.never_reads(b'{"t":"hello","dev":"hr"}\n' + b'{"t":"ping"}\n' * n)

    def teardown(self) -> None:
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and (
                    self.sensor.acked < self.sensor.next_seq - 1
                    or len(self.commands) < self.sent_cmds):
                time.sleep(0.02)
            state = self.svc.core.devices["hr"]
            assert self.sensor.acked == self.sensor.next_seq - 1 == state.accepted
            assert state.chain == self.sensor.chain
            assert state.invalid == 0 and state.next == self.sensor.next_seq
            assert self.commands == [{"n": i} for i in range(self.sent_cmds)]
            assert self.svc.core.auth_refused == self.refused
        finally:
            super().teardown()
            self.sensor.stop()
            self.actuator.stop()
            self.svc.stop()


TestStreamHostile = StreamMachine.TestCase
TestStreamHostile.settings = FAST


# --- the application VM's metadata port ----------------------------------------------------------

def spot(i: int) -> dict[str, Any]:
    return {"spot": f"s{i}", "lat": 40.0, "lon": -74.0, "free": i % 2 == 0, "ts": float(i)}


class AppVmMachine(Hostile):
    """An application VM fed by one real sink through a relay that cuts the link."""

    def __init__(self) -> None:
        super().__init__()
        self.server = self.app = AppVmService("127.0.0.1", 0, key=KEY)
        self.app.max_conns, self.app.evict_idle_s = 32, 0.2
        self.max_line = self.app.max_line
        self.fresh = (wire.dumps({"t": "hello", "app": "park", "proxy": "px", "epoch": "f"}),
                      '"t":"challenge"')
        self.app.start()
        self.app._op_configure({"app": "park", "kind": "parknet"})
        self.relay = Relay(self.app.address, chunk=700)
        self.sink = MetadataSink(*self.relay.address, key=wire.sink_key(KEY, "park", "px"),
                                 app="park", proxy="px", retry_s=0.02)
        self.sent = 0
        self.expected = dict.fromkeys(("auth_refused", "schema_refused"), 0)

    @rule(n=st.integers(1, 80))
    def metadata(self, n: int) -> None:
        for _ in range(n):
            self.sink.send(spot(self.sent))
            self.sent += 1

    @rule()
    def cut(self) -> None:
        self.relay.cut()

    @rule(proxy=st.sampled_from(["px", "px-evil"]), forged=st.booleans())
    def impostor(self, proxy: str, forged: bool) -> None:
        with socket.create_connection(self.app.address, timeout=2) as sock:
            reader = sock.makefile("rb")
            if not forged:  # metadata with no handshake at all
                sock.sendall(wire.meta_line(1, spot(10**6)))
                assert json.loads(reader.readline())["t"] == "refused"
                return
            sock.sendall(wire.dumps({"t": "hello", "app": "park", "proxy": proxy,
                                     "epoch": "ffff"}))
            nonce = json.loads(reader.readline())["nonce"]
            key = wire.sink_key(wire.new_key(), "park", proxy)  # not derived from KEY
            sock.sendall(wire.dumps({"t": "auth", "mac": wire.sink_proof(key, "park", proxy,
                                                                          nonce)}))
            assert json.loads(reader.readline())["t"] == "refused"
            self.expected["auth_refused"] += 1

    @rule(bad=st.sampled_from([{"spot": "", "lat": 1.0, "lon": 1.0, "free": True, "ts": 1.0},
                               {"spot": "s", "lat": 91.0, "lon": 1.0, "free": True, "ts": 1.0},
                               {"spot": "s", "lat": 1.0, "lon": 1.0, "free": 1, "ts": 1.0},
                               {"spot": "s"}, [1, 2]]))
    def authorised_proxy_sends_bad_schema(self, bad: Any) -> None:
        with socket.create_connection(self.app.address, timeout=2) as sock:
            reader = sock.makefile("rb")
            epoch = wire.new_nonce()[:16]
            sock.sendall(wire.dumps({"t": "hello", "app": "park", "proxy": "px-2",
                                     "epoch": epoch}))
            nonce = json.loads(reader.readline())["nonce"]
            key = wire.sink_key(KEY, "park", "px-2")
            sock.sendall(wire.dumps({"t": "auth", "mac": wire.sink_proof(key, "park", "px-2",
                                                                          nonce)}))
            assert json.loads(reader.readline())["t"] == "welcome"
            sock.sendall(wire.meta_line(1, bad))
            assert "schema" in json.loads(reader.readline())["error"]
            self.expected["schema_refused"] += 1

    @rule(n=st.integers(10, 200))
    def slow_reader(self, n: int) -> None:
        self.never_reads(wire.dumps({"t": "hello", "app": "park", "proxy": "px",
                                     "epoch": "0"}) * n)

    def teardown(self) -> None:
        try:
            deadline = time.monotonic() + 15
            while self.sink.pending() and time.monotonic() < deadline:
                time.sleep(0.02)
            got = [json.loads(x) for x in self.app.received]
            assert [g["m"] for g in got if g["src"] == "px"] == [spot(i)
                                                                for i in range(self.sent)]
            assert all(g["src"] == "px" for g in got)  # nothing else ever got in
            for counter, count in self.expected.items():
                assert self.app.audit[counter] == count, (counter, self.app.audit)
            assert self.app.audit["lost"] == 0
        finally:
            super().teardown()
            self.sink.close()
            self.relay.close()
            self.app.stop()


TestAppVmHostile = AppVmMachine.TestCase
TestAppVmHostile.settings = FAST
