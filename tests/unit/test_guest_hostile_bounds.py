"""Each bound of the guest's listeners, one test each, over real loopback sockets.

The line servers (agent/guest/edgeiot_agent/lineserver.py) serve peers on the lab segment,
all suspects: exact line limits, bounded output, a connection cap with a clean refusal and
eviction of idle strangers, idle timeouts, an accept loop that backs off when file
descriptors run out, handler errors confined to their connection, and a supervisor that
restarts a dead thread and counts it. Then authentication at the control port (signed,
refused and counted; secure without a key unless --insecure), the device-registration and
proxy bounds.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.guest.edgeiot_agent import wire
from agent.guest.edgeiot_agent.app import Agent, AgentConfig
from agent.guest.edgeiot_agent.appvm import AppVmService
from agent.guest.edgeiot_agent.control import RequestError
from agent.guest.edgeiot_agent.lineserver import Conn, LineServer
from agent.guest.edgeiot_agent.metadata import MetadataSink
from agent.guest.edgeiot_agent.streams import StreamService

ROOT = Path(__file__).resolve().parents[2]
KEY = wire.new_key()


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cond()


class Echo(LineServer):
    """Answers each line with `reply_size` bytes (or the line itself); TOO LONG for None."""

    thread_name = "echo"
    reply_size = 0

    def handle_line(self, conn: Conn, line: bytes | None) -> bytes | None:
        if line is None:
            return b"TOO LONG\n"
        if line == b"boom":
            raise RuntimeError("a handler bug")
        if line == b"die":
            raise SystemExit  # not an Exception: it ends the thread
        if self.reply_size:
            return b"r" * (self.reply_size - 1) + b"\n"
        return line + b"\n"


@pytest.fixture
def echo() -> Iterator[Echo]:
    server = Echo("127.0.0.1", 0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def connect(server: LineServer) -> socket.socket:
    return socket.create_connection(server.address, timeout=5)


def read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# --- line limits ---------

def test_a_line_of_exactly_max_line_is_accepted_one_more_byte_is_not(echo: Echo) -> None:
    echo.max_line = 100
    with connect(echo) as sock:
        exact = b"a" * 100
        sock.sendall(exact[:37])
        time.sleep(0.05)  # in two reads: the limit holds across them
        sock.sendall(exact[37:] + b"\n")
        assert read_line(sock) == exact + b"\n"
        sock.sendall(b"b" * 101 + b"\n" + b"c" * 150 + b"\nafter\n")
        assert [read_line(sock) for _ in range(3)] == [b"TOO LONG\n", b"TOO LONG\n", b"after\n"]
        sock.sendall(b"d" * 1000)  # never ends: reported once, its bytes not kept
        assert read_line(sock) == b"TOO LONG\n"
        sock.sendall(b"d" * 1000 + b"\nok\n")
        assert read_line(sock) == b"ok\n"
    assert echo.counters["too_long"] == 3


# --- output bound ---------

def test_replies_that_would_overflow_the_output_bound_close_the_connection(echo: Echo) -> None:
    echo.reply_size, echo.max_out = 1024, 64 * 1024
    with connect(echo) as greedy:
        greedy.sendall(b"x\n" * 2000)  # 4 KB of requests asking for 2 MB of replies
        assert closed_by_peer(greedy)
    assert echo.counters["overflow_closed"] == 1
    with connect(echo) as polite:
        polite.sendall(b"x\n")
        assert len(read_line(polite)) == 1024


def test_a_client_that_never_reads_is_throttled_then_dropped(echo: Echo) -> None:
    echo.reply_size, echo.max_out, echo.idle_timeout_s = 16 * 1024, 256 * 1024, 0.5
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(echo.address)
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 3
    try:
        while time.monotonic() < deadline:  # one small request at a time, never reading
            try:
                sent += sock.send(b"x\n")
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                break
            peak = echo.stats()["out_bytes"]
            assert peak <= echo.max_out + echo.reply_size
        wait_until(lambda: echo.stats()["conns"] == 0)
    finally:
        sock.close()
    assert sent < 3_000_000  # the server stopped reading it long before
    assert echo.counters["idle_closed"] + echo.counters["overflow_closed"] == 1


# --- connections ---------

def test_beyond_the_cap_a_connection_gets_one_line_and_is_closed(echo: Echo) -> None:
    echo.max_conns, echo.evict_idle_s = 3, 1000.0
    held = [connect(echo) for _ in range(3)]
    try:
        for sock in held:  # every slot taken and busy
            sock.sendall(b"hi\n")
            assert read_line(sock) == b"hi\n"
        with connect(echo) as extra:
            assert json.loads(read_line(extra)) == {"error": "too many connections"}
            assert closed_by_peer(extra)
        assert echo.counters["refused_conns"] == 1
        held[0].sendall(b"still\n")
        assert read_line(held[0]) == b"still\n"
    finally:
        for sock in held:
            sock.close()


def test_a_full_server_evicts_the_stranger_idle_longest_never_a_trusted_peer(echo: Echo) -> None:
    echo.max_conns, echo.evict_idle_s = 2, 0.2
    trusted, stranger = connect(echo), connect(echo)
    try:
        wait_until(lambda: echo.stats()["conns"] == 2)
        next(c for c in echo._conns.values()).trusted = True  # the first one proved itself
        time.sleep(0.3)
        with connect(echo) as newcomer:
            newcomer.sendall(b"served\n")
            assert read_line(newcomer) == b"served\n"
        assert closed_by_peer(stranger)
        trusted.sendall(b"kept\n")
        assert read_line(trusted) == b"kept\n"
        assert echo.counters["evicted"] == 1
    finally:
        trusted.close()
        stranger.close()


def test_a_chatty_stranger_holds_a_slot_only_for_the_grace_period(echo: Echo) -> None:
    echo.max_conns, echo.evict_idle_s, echo.trust_grace_s = 1, 1000.0, 0.3
    with connect(echo) as chatty:
        chatty.sendall(b"hi\n")
        assert read_line(chatty) == b"hi\n"
        with connect(echo) as early:  # within the grace period: the stranger keeps its slot
            assert b"too many" in read_line(early)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # busy all along, never idle
            chatty.sendall(b"x\n")
            read_line(chatty)
        with connect(echo) as newcomer:
            newcomer.sendall(b"in\n")
            assert read_line(newcomer) == b"in\n"
        assert closed_by_peer(chatty)
    assert echo.counters["evicted"] == 1


def test_idle_connections_time_out_busy_ones_stay(echo: Echo) -> None:
    echo.idle_timeout_s = 0.4
    silent, partial, busy = connect(echo), connect(echo), connect(echo)
    try:
        partial.sendall(b"no newline ever")  # slowloris: bytes, never a line
        start = time.monotonic()
        while time.monotonic() - start < 1.5:
            busy.sendall(b"x\n")
            assert read_line(busy) == b"x\n"
            time.sleep(0.1)
        assert closed_by_peer(silent, 0.1) and closed_by_peer(partial, 0.1)
        assert echo.counters["idle_closed"] == 2
    finally:
        for sock in (silent, partial, busy):
            sock.close()


def test_a_handler_bug_closes_only_that_connection(echo: Echo) -> None:
    with connect(echo) as victim, connect(echo) as bystander:
        victim.sendall(b"boom\n")
        assert closed_by_peer(victim)
        bystander.sendall(b"fine\n")
        assert read_line(bystander) == b"fine\n"
    assert echo.counters["handler_errors"] == 1 and echo.alive()


EMFILE_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    sys.path.insert(0, sys.argv[1])
    from agent.guest.edgeiot_agent.lineserver import LineServer
    class Echo(LineServer):
        max_conns = 10000
        accept_backoff_s = 0.3
        def handle_line(self, conn, line):
            return (line or b"?") + b"\\n"
    resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24))
    server = Echo("127.0.0.1", 0)
    server.start()
    print(server.address[1], flush=True)
    for command in sys.stdin:
        t0 = time.process_time()
        time.sleep(float(command))
        print(json.dumps({"cpu_s": time.process_time() - t0, **server.stats()}), flush=True)
""")


def test_running_out_of_descriptors_backs_off_instead_of_spinning() -> None:
    child = subprocess.Popen([sys.executable, "-c", EMFILE_CHILD, str(ROOT)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    socks: list[socket.socket] = []
    try:
        assert child.stdout is not None and child.stdin is not None
        port = int(child.stdout.readline())
        for _ in range(40):  # more than the child's 24 descriptors; the rest wait in backlog
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.3)
        child.stdin.write("1.0\n")
        child.stdin.flush()
        stats = json.loads(child.stdout.readline())
        assert stats["accept_errors"] >= 1
        assert stats["cpu_s"] < 0.3, stats  # a spinning loop would burn the whole second
        for sock in socks:
            sock.close()
        socks.clear()
        time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"back\n")
            assert read_line(sock) == b"back\n"
    finally:
        for sock in socks:
            sock.close()
        child.kill()
        child.wait(5)


# --- the agent: supervisor and control authentication ---------

def agent_config(tmp_path: Path, cmdline: str, **kw: Any) -> AgentConfig:
    (tmp_path / "boot_id").write_text("boot\n")
    (tmp_path / "meminfo").write_text("MemTotal: 131072 kB\nMemAvailable: 90000 kB\n")
    (tmp_path / "cmdline").write_text(cmdline)
    return AgentConfig(host="127.0.0.1", port=0, name="t", boot_id_path=str(tmp_path / "boot_id"),
                       meminfo_path=str(tmp_path / "meminfo"),
                       uptime_path=str(tmp_path / "uptime"),
                       cmdline_path=str(tmp_path / "cmdline"), **kw)


class Crashy(Echo):
    name = "crashy"

    def status(self) -> dict[str, Any]:
        return {}

    def ops(self) -> dict[str, Any]:
        return {}


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_the_supervisor_restarts_a_dead_thread_and_counts_it(tmp_path: Path) -> None:
    crashy = Crashy("127.0.0.1", 0)
    agent = Agent(agent_config(tmp_path, f"{wire.KEY_CMDLINE}={KEY}", supervise_s=0.1), [crashy])

    def die(_req: dict[str, Any]) -> dict[str, Any]:
        raise SystemExit  # past the dispatcher's `except Exception`: the control thread ends

    agent.dispatcher.register("die", die)
    agent.start()
    try:
        host, port = agent.server.address
        with connect(crashy) as sock:
            sock.sendall(b"die\n")  # its thread ends
            wait_until(lambda: not crashy._thread.is_alive() or "crashy" in agent.restarts)
        with wire.ControlClient(host, port, KEY) as client:
            client.sock.settimeout(0.5)
            with pytest.raises(OSError):
                client.call("die")
        wait_until(lambda: agent.restarts == {"crashy": 1, "control": 1})
        with wire.ControlClient(host, port, KEY) as client:
            status = client.call(wire.OP_STATUS)
        assert status["restarts"] == {"crashy": 1, "control": 1}
        assert status["restarts_total"] == 2
        with connect(crashy) as sock:
            sock.sendall(b"again\n")
            assert read_line(sock) == b"again\n"
    finally:
        agent.stop()
        crashy.stop()


class FlakySink(MetadataSink):
    """A sink whose thread dies (SystemExit) on its first batch."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.crash = True
        super().__init__(*args, **kw)

    def _write_batch(self, sock: socket.socket) -> bool:
        if self.crash:
            self.crash = False
            raise SystemExit
        return super()._write_batch(sock)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_sink_thread_is_restarted_and_loses_no_metadata(tmp_path: Path) -> None:
    app = AppVmService("127.0.0.1", 0, key=KEY)
    app.start()
    app._op_configure({"app": "tr", "kind": "traffic"})
    svc = StreamService("px", "127.0.0.1", 0)
    agent = Agent(agent_config(tmp_path, f"{wire.KEY_CMDLINE}={KEY}", supervise_s=0.1), [svc])
    agent.start()
    sink = FlakySink("127.0.0.1", app.address[1], key=wire.sink_key(KEY, "tr", "px"),
                     app="tr", proxy="px", retry_s=0.02)
    try:
        svc.core.install("tr", "traffic", ["gps", "speed"], {}, sink)
        metas = [{"area": f"A{i}_0", "degree": 0.5, "samples": 3, "ts": float(i)}
                 for i in range(50)]
        for meta in metas:
            sink.send(meta)
        wait_until(lambda: agent.restarts.get("streams") == 1)
        wait_until(lambda: sink.pending() == 0)
        assert [json.loads(x)["m"] for x in app.received] == metas
    finally:
        agent.stop()
        svc.stop()
        app.stop()


def test_the_agents_idle_timeout_reaches_every_listener(tmp_path: Path) -> None:
    svc = StreamService("px", "127.0.0.1", 0)
    agent = Agent(agent_config(tmp_path, f"{wire.KEY_CMDLINE}={KEY}", idle_timeout_s=0.3),
                  [svc])
    agent.start()
    try:
        assert svc.idle_timeout_s == agent.server.idle_timeout_s == 0.3
        with connect(agent.server) as control, connect(svc) as stream:
            assert closed_by_peer(control, 3.0) and closed_by_peer(stream, 3.0)
        with wire.ControlClient(*agent.server.address, key=KEY) as client:
            status = client.call(wire.OP_STATUS)
        assert status["control"]["idle_closed"] == 1
        assert status["streams"]["server"]["idle_closed"] == 1
    finally:
        agent.stop()


def test_unsigned_ops_are_refused_and_counted(tmp_path: Path) -> None:
    agent = Agent(agent_config(tmp_path, f"ro {wire.KEY_CMDLINE}={KEY}"))
    agent.start()
    try:
        with wire.ControlClient(*agent.server.address, key=None) as stranger:
            assert stranger.call(wire.OP_PING)["ok"] is True
            for op in (wire.OP_STATUS, wire.OP_DIRTY, "nonsense"):
                reply = stranger.call(op)
                assert reply["ok"] is False and reply["error"].startswith(wire.AUTH_REFUSED)
        with wire.ControlClient(*agent.server.address, key=KEY) as owner:
            status = owner.call(wire.OP_STATUS)
        assert status["auth_refused"] == 3 and status["secured"] is True
    finally:
        agent.stop()


@pytest.mark.parametrize("insecure", [False, True])
def test_without_a_key_only_insecure_mode_accepts_unsigned_ops(tmp_path: Path,
                                                               insecure: bool) -> None:
    agent = Agent(agent_config(tmp_path, "console=ttyS0 edgeiot.key=tooshort",
                               insecure=insecure))
    agent.start()
    try:
        with wire.ControlClient(*agent.server.address, key=None) as client:
            reply = client.call(wire.OP_STATUS)
        assert reply["ok"] is insecure
        if not insecure:
            assert "no key" in reply["error"] and "--insecure" in reply["error"]
    finally:
        agent.stop()


def test_the_control_port_drops_a_client_that_never_reads(tmp_path: Path) -> None:
    agent = Agent(agent_config(tmp_path, f"{wire.KEY_CMDLINE}={KEY}"))
    agent.server.max_out = 64 * 1024
    agent.start()
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(agent.server.address)
        reader = sock.makefile("rb")
        sock.sendall(b'{"op":"challenge"}\n')
        nonce = json.loads(reader.readline())["nonce"]
        flood = b"".join(wire.dumps(wire.sign_request(KEY, nonce, n, {"op": "status"}))
                         for n in range(1, 3001))
        try:
            sock.sendall(flood)  # 3,000 status replies, never read
        except OSError:
            pass
        assert closed_by_peer(sock)
        wait_until(lambda: agent.server.counters["overflow_closed"] == 1)
        sock.close()
        with wire.ControlClient(*agent.server.address, key=None) as fresh:
            assert fresh.call(wire.OP_PING)["ok"] is True
    finally:
        agent.stop()


# --- the proxy's own bounds ---------

def test_device_registration_is_bounded_and_needs_keys() -> None:
    svc = StreamService("px", "127.0.0.1", 0)
    svc.core.max_devices = 10
    try:
        many = [{"id": f"d{i}", "type": "gps", "user": "u", "key": KEY} for i in range(11)]
        with pytest.raises(RequestError, match="at most 10"):
            svc._op_register({"devices": many})
        assert svc.core.devices == {}  # all or none
        assert svc._op_register({"devices": many[:10]})["registered"] == 10
        with pytest.raises(RequestError, match="at most 10"):
            svc._op_register({"devices": many[10:]})
        for bad in ({"id": "k", "type": "gps", "user": "u"},
                    {"id": "k", "type": "gps", "user": "u", "key": KEY.upper()},
                    {"id": "x" * 200, "type": "gps", "user": "u", "key": KEY},
                    {"id": "k", "type": ["gps"], "user": "u", "key": KEY}):
            with pytest.raises(RequestError):
                svc._op_register({"devices": [bad], "held": False})
    finally:
        svc.stop()


def test_model_install_needs_a_sink_key() -> None:
    svc = StreamService("px", "127.0.0.1", 0)
    try:
        base = {"app": "p", "model": "parknet", "grants": ["gps", "ultrasonic"]}
        for sink in ({"host": "127.0.0.1", "port": 1}, {"host": "127.0.0.1", "key": "ab"},
                     {"host": "127.0.0.1", "port": "x", "key": KEY},
                     {"host": "127.0.0.1", "port": 10**9, "key": KEY}):
            with pytest.raises(RequestError):
                svc._op_install({**base, "sink": sink})
        assert svc.core.models == {}
    finally:
        svc.stop()
