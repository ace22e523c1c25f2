"""Guest agent on the host: protocol, counter, dirtier pacing and bad input.

The agent is the same source the image ships; here its control server listens on
127.0.0.1 with an ephemeral port, and /proc paths are replaced by temporary files.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.guest.edgeiot_agent import sysinfo, wire
from agent.guest.edgeiot_agent.app import Agent, AgentConfig, parse_args
from agent.guest.edgeiot_agent.control import Dispatcher
from agent.guest.edgeiot_agent.counter import Counter
from agent.guest.edgeiot_agent.dirtier import MAX_LAG_S, PAGE_SIZE, Dirtier

BOOT_ID = "0b7e4d2c-1111-4222-8333-944455556666"
MEMINFO = "MemTotal:  131072 kB\nMemFree:  60000 kB\nMemAvailable:  90000 kB\n"
KEY = "5e" * 32


class Client:
    """Newline-delimited JSON over one TCP connection; `call` signs with KEY (wire.py)."""

    def __init__(self, address: tuple[str, int], key: str | None = KEY) -> None:
        self.sock = socket.create_connection(address, timeout=5)
        self.reader = self.sock.makefile("rb")
        self.key, self.nonce, self.n = key, "", 0

    def send_raw(self, line: bytes) -> dict[str, Any]:
        self.sock.sendall(line + b"\n")
        reply = self.reader.readline()
        assert reply.endswith(b"\n")
        return json.loads(reply)

    def call(self, **request: Any) -> dict[str, Any]:
        if self.key is not None and request.get("op") not in wire.OPEN_OPS:
            if not self.nonce:
                self.nonce = self.send_raw(b'{"op":"challenge"}')["nonce"]
            self.n += 1
            request = wire.sign_request(self.key, self.nonce, self.n, request)
        return self.send_raw(json.dumps(request).encode())

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    boot_id = tmp_path / "boot_id"
    boot_id.write_text(BOOT_ID + "\n")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    uptime = tmp_path / "uptime"
    uptime.write_text("123.45 200.00\n")
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"console=ttyS0 {wire.KEY_CMDLINE}={KEY}\n")
    config = AgentConfig(host="127.0.0.1", port=0, name="unit", boot_id_path=str(boot_id),
                         uptime_path=str(uptime), meminfo_path=str(meminfo),
                         cmdline_path=str(cmdline))
    a = Agent(config)
    a.start()
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture
def client(agent: Agent) -> Iterator[Client]:
    c = Client(agent.server.address)
    try:
        yield c
    finally:
        c.close()


def test_status_reports_identity_counter_and_dirtier(client: Client) -> None:
    reply = client.call(op="status")
    assert reply["ok"] is True
    assert reply["boot_id"] == BOOT_ID
    assert reply["name"] == "unit"
    assert reply["uptime_s"] == pytest.approx(123.45)
    assert isinstance(reply["counter"], int)
    assert set(reply["dirty"]) >= {"pages_per_s", "working_set_bytes", "achieved_pages_per_s"}
    assert reply["memory"]["total_kib"] == 131072


def test_ping(client: Client) -> None:
    assert client.call(op="ping") == {"ok": True, "pong": True}


def test_counter_increases_monotonically_over_the_wire(client: Client) -> None:
    seen = []
    for _ in range(5):
        seen.append(client.call(op="status")["counter"])
        time.sleep(0.05)
    assert seen == sorted(seen)
    assert seen[-1] > seen[0]


def test_counter_ticks_and_never_goes_back() -> None:
    counter = Counter(interval_s=0.001)
    counter.start()
    try:
        values = []
        for _ in range(20):
            values.append(counter.value)
            time.sleep(0.005)
    finally:
        counter.stop()
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert values[-1] > values[0]
    assert not hasattr(counter, "reset")


@pytest.mark.parametrize(
    "line, fragment",
    [
        (b"not json", "malformed JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"no_op": 1}', "unauthenticated"),
        (b'{"op": "explode"}', "unauthenticated"),
        (b"\xff\xfe", "not UTF-8"),
        (b'\xff\xfe{\x00}\x00', "not UTF-8"),  # UTF-16: json.loads(bytes) would take it
        (b"[" * 60_000, "nested too deeply"),
        (b'{"op": "ping", "x": NaN}', "not JSON"),
        (b'{"op": "dirty", "pages_per_s": 1e999}', "not a finite number"),
    ],
)
def test_bad_requests_get_an_error_and_the_server_keeps_running(
    client: Client, line: bytes, fragment: str
) -> None:
    reply = client.send_raw(line)
    assert reply["ok"] is False
    assert fragment in reply["error"]
    assert client.call(op="ping")["ok"] is True


@pytest.mark.parametrize(
    "request_, fragment",
    [
        ({"no_op": 1}, "unknown op"),
        ({"op": "explode"}, "unknown op"),
        ({"op": "dirty", "pages_per_s": "fast"}, "pages_per_s"),
        ({"op": "dirty", "pages_per_s": -5, "working_set_mib": 1}, ">= 0"),
        ({"op": "dirty", "pages_per_s": 10, "working_set_mib": 0}, "at least one page"),
        ({"op": "dirty", "pages_per_s": 10, "working_set_mib": 1000}, "exceeds the limit"),
        ({"op": "dirty", "pages_per_s": 10**9, "working_set_mib": 1}, "above the limit"),
        ({"op": "dirty", "pages_per_s": 10, "working_set_mib": 2**60}, "above the limit"),
        ({"op": "dirty", "pages_per_s": 10, "working_set_mib": 100}, "exceeds the limit"),
        ({"op": "dirty", "pages_per_s": 10**400, "working_set_mib": 1}, "above the limit"),
    ],
)
def test_bad_signed_requests_get_an_error_and_change_nothing(
    client: Client, request_: dict[str, Any], fragment: str
) -> None:
    reply = client.call(**request_)
    assert reply["ok"] is False
    assert fragment in reply["error"]
    assert client.call(op="status")["dirty"]["working_set_bytes"] == 0


def test_overlong_line_is_refused_and_other_clients_are_unaffected(agent: Agent) -> None:
    bad = Client(agent.server.address)
    try:
        bad.sock.sendall(b"x" * (70 * 1024))
        reply = json.loads(bad.reader.readline())
        assert reply["ok"] is False and "longer than" in reply["error"]
    finally:
        bad.close()
    good = Client(agent.server.address)
    try:
        assert good.call(op="ping")["ok"] is True
    finally:
        good.close()


def test_several_requests_in_one_packet(client: Client) -> None:
    nonce = client.send_raw(b'{"op":"challenge"}')["nonce"]
    status = json.dumps(wire.sign_request(KEY, nonce, 1, {"op": "status"})).encode()
    client.sock.sendall(b'{"op":"ping"}\n\n' + status + b"\n")
    first = json.loads(client.reader.readline())
    second = json.loads(client.reader.readline())
    assert first == {"ok": True, "pong": True}
    assert second["boot_id"] == BOOT_ID


def test_dirty_op_sets_the_dirtier_at_run_time(client: Client) -> None:
    reply = client.call(op="dirty", pages_per_s=2000, working_set_mib=4)
    assert reply["ok"] is True
    assert reply["dirty"]["pages_per_s"] == 2000
    assert reply["dirty"]["working_set_bytes"] == 4 * 1024 * 1024
    time.sleep(1.5)
    achieved = client.call(op="status")["dirty"]["achieved_pages_per_s"]
    assert 1500 <= achieved <= 2500
    # Omitted fields keep their value; rate 0 stops the writer.
    assert client.call(op="dirty", pages_per_s=0)["dirty"]["working_set_bytes"] == 4 * 1024**2
    time.sleep(0.1)
    assert client.call(op="status")["dirty"]["achieved_pages_per_s"] == 0.0


def test_dirtier_paces_to_the_requested_rate_with_an_injected_clock() -> None:
    d = Dirtier()
    d.configure(pages_per_s=1000, working_set_bytes=64 * PAGE_SIZE)
    now, written = 0.0, 0
    d.step(now)
    for _ in range(200):  # 2 s in 10 ms steps
        now += 0.01
        written += d.step(now)
    assert written == pytest.approx(2000, abs=2)
    assert d.achieved_pages_per_s() == pytest.approx(1000, rel=0.02)


def test_dirtier_does_not_burst_after_a_stall() -> None:
    d = Dirtier()
    d.configure(pages_per_s=1000, working_set_bytes=1024 * PAGE_SIZE)
    d.step(0.0)
    burst = d.step(30.0)  # the guest was paused for 30 s
    assert burst <= 1000 * MAX_LAG_S + 1


def test_dirtier_writes_one_nonzero_byte_per_page_and_changes_it_each_pass() -> None:
    d = Dirtier()
    pages = 8
    d.configure(pages_per_s=pages * 100, working_set_bytes=pages * PAGE_SIZE)
    d.step(0.0)
    d.step(pages / (pages * 100))  # exactly one pass
    buf = bytes(d._buf)
    first = [buf[i * PAGE_SIZE] for i in range(pages)]
    assert all(v != 0 for v in first)
    assert buf.count(0) == len(buf) - pages  # one byte per page, nothing else touched
    d.step(2 * pages / (pages * 100))
    assert [d._buf[i * PAGE_SIZE] for i in range(pages)] != first


def test_dispatcher_isolates_a_failing_handler() -> None:
    disp = Dispatcher()

    def boom(_req: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("kaput")

    disp.register("boom", boom)
    reply = json.loads(disp.handle_line(b'{"op":"boom"}'))
    assert reply["ok"] is False and "kaput" in reply["error"]
    with pytest.raises(ValueError):
        disp.register("boom", boom)


def test_meminfo_parser() -> None:
    table = sysinfo.parse_kib_table("MemTotal: 100 kB\nHugePages_Total: 0\nBad line\n")
    assert table == {"MemTotal": 100}


def test_parse_args_reads_options_and_rejects_junk(capsys: pytest.CaptureFixture[str]) -> None:
    config = parse_args(["--port", "7171", "--name", "fog1-proxy", "--host", "127.0.0.1"])
    assert (config.port, config.name, config.host) == (7171, "fog1-proxy", "127.0.0.1")
    assert parse_args([]).port == 7070 and parse_args([]).insecure is False
    dev = parse_args(["--insecure", "--data-port", "0", "--idle-timeout", "5",
                      "--cmdline-path", "/tmp/c"])
    assert (dev.insecure, dev.data_port, dev.idle_timeout_s, dev.cmdline_path) == \
        (True, 0, 5.0, "/tmp/c")
    for bad in (["--port", "x"], ["--bogus", "1"], ["--name"], ["--idle-timeout", "0"],
                ["--idle-timeout", "nan"], ["--data-port", "x"]):
        with pytest.raises(SystemExit) as exc:
            parse_args(bad)
        assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err
