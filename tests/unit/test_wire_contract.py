"""The wire contract (agent/guest/edgeiot_agent/wire.py) holds both ends to one definition.

Each test runs the two real ends against each other over loopback: the device emulator's
handshake, record lines and hash chain against the real stream service; wire's control
client against the real control server; the real metadata sink against the real
application VM. Names (ports, ops, frame kinds) are checked against what the servers
actually register, emit and accept.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.devices.emulator import Device, lookup
from agent.guest import edgeiot_agent
from agent.guest.edgeiot_agent import codec, wire
from agent.guest.edgeiot_agent.app import Agent, AgentConfig
from agent.guest.edgeiot_agent.appvm import AppVmService
from agent.guest.edgeiot_agent.control import ControlServer, Dispatcher
from agent.guest.edgeiot_agent.handover import parse_snapshot
from agent.guest.edgeiot_agent.metadata import MetadataSink
from agent.guest.edgeiot_agent.streams import StreamService

ROOT = Path(__file__).resolve().parents[2]
VM_KEY = wire.new_key()
DEV_KEY = wire.new_key()


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cond()


@pytest.fixture
def proxy() -> Iterator[StreamService]:
    svc = StreamService("px-c", "127.0.0.1", 0)
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def appvm() -> Iterator[AppVmService]:
    svc = AppVmService("127.0.0.1", 0, key=VM_KEY)
    svc.start()
    svc._op_configure({"app": "park", "kind": "parknet"})
    try:
        yield svc
    finally:
        svc.stop()


# --- ports and names ----------------------------------------------------------------------

def test_every_default_port_is_wires(tmp_path: Path) -> None:
    assert edgeiot_agent.DEFAULT_PORT == wire.CONTROL_PORT == AgentConfig().port
    assert StreamService.__init__.__defaults__[1] == wire.STREAM_PORT  # type: ignore[index]
    assert AppVmService.__init__.__defaults__[1] == wire.METADATA_PORT  # type: ignore[index]
    assert MetadataSink.__init__.__defaults__[0] == wire.METADATA_PORT  # type: ignore[index]
    assert f"--port {wire.CONTROL_PORT}" in (ROOT / "images" / "init").read_text()
    from orchestrator.images import AGENT_PORT
    assert AGENT_PORT == wire.CONTROL_PORT


def test_every_op_a_guest_serves_is_named_in_wire(tmp_path: Path) -> None:
    named = {v for k, v in vars(wire).items() if k.startswith("OP_")}
    served: set[str] = set()
    for role in ("proxy", "app"):
        from agent.guest.edgeiot_agent.dataplane import services_for
        services = services_for(role, "px", VM_KEY)
        for s in services:
            s.port = 0
        agent = Agent(agent_config(tmp_path), services)
        try:
            served |= set(agent.dispatcher.ops)
        finally:
            agent.server.stop()
            for s in services:
                s.stop()
    assert served | wire.OPEN_OPS == named


def agent_config(tmp_path: Path, cmdline: str = "") -> AgentConfig:
    boot = tmp_path / "boot_id"
    boot.write_text("b\n")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 131072 kB\nMemAvailable: 90000 kB\n")
    line = tmp_path / "cmdline"
    line.write_text(cmdline)
    return AgentConfig(host="127.0.0.1", port=0, name="c", boot_id_path=str(boot),
                       meminfo_path=str(meminfo), uptime_path=str(tmp_path / "none"),
                       cmdline_path=str(line))


def test_codec_accepts_exactly_the_device_frames() -> None:
    samples = {wire.F_HELLO: {"dev": "d"}, wire.F_AUTH: {"dev": "d", "mac": "0" * 64},
               wire.F_REC: {"seq": 1, "ts": 1.0, "v": {}}, wire.F_PING: {}}
    assert set(samples) == wire.DEVICE_FRAMES
    for kind, body in samples.items():
        assert codec.decode_frame(wire.dumps({wire.FRAME_KIND: kind, **body}))["t"] == kind
    for kind in (wire.F_WELCOME, wire.F_ACK, wire.F_CMD, wire.F_MOVED, wire.M_META):
        with pytest.raises(codec.FrameError):
            codec.decode_frame(wire.dumps({wire.FRAME_KIND: kind}))


def test_the_key_on_the_kernel_command_line() -> None:
    key = wire.new_key()
    assert wire.is_key(key) and not wire.is_key(key.upper()) and not wire.is_key(key[:-1])
    assert wire.key_from_cmdline(f"console=ttyS0 {wire.KEY_CMDLINE}={key} quiet") == key
    assert wire.key_from_cmdline(f"{wire.KEY_CMDLINE}=short") is None
    assert wire.key_from_cmdline("console=ttyS0") is None


# --- device streams: the emulator against the real proxy --------------------------------------

def test_the_emulators_handshake_records_and_chain_are_the_proxys(proxy: StreamService) -> None:
    proxy._op_register({"devices": [{"id": "d", "type": "heart-rate", "user": "u",
                                     "key": DEV_KEY}]})
    dev = Device("d", lambda: proxy.address, key=DEV_KEY)
    dev.start()
    try:
        for i in range(20):
            dev.emit(1000.0 + i, {"bpm": 60 + i})
        wait_until(lambda: dev.acked == 20)
    finally:
        dev.stop()
    state = proxy.core.devices["d"]
    assert (state.accepted, state.next, state.chain) == (20, 21, dev.chain)
    assert dev.served_by == ["px-c"] and proxy.core.auth_refused == 0
    line = wire.record_line(1, 1000.0, {"bpm": 60})
    assert codec.decode_frame(line) == {"t": "rec", "seq": 1, "ts": 1000.0, "v": {"bpm": 60}}
    assert wire.chain_step("", line) == wire.chain_step("", bytes(line))


def test_a_device_with_another_key_or_none_is_refused(proxy: StreamService) -> None:
    proxy._op_register({"devices": [{"id": "d", "type": "heart-rate", "user": "u",
                                     "key": DEV_KEY}]})
    for key in (wire.new_key(), None):
        dev = Device("d", lambda: proxy.address, key=key)
        dev.start()
        try:
            wait_until(lambda dev=dev: dev.refused is not None)  # type: ignore[misc]
        finally:
            dev.stop()
    assert proxy.core.auth_refused == 1  # the keyless device never sent a proof
    assert proxy.core.devices["d"].next == 1


def test_the_directory_schema_is_wires() -> None:
    directory = {wire.DIR_USERS: {"u": {wire.DIR_PROXY: "10.0.0.1", wire.DIR_PORT: 1}},
                 wire.DIR_DEVICES: {"d": {wire.DIR_PROXY: "10.0.0.2", wire.DIR_PORT: 2}}}
    assert lookup(directory, "u", "d")[wire.DIR_PROXY] == "10.0.0.2"
    assert lookup(directory, "u", "e")[wire.DIR_PORT] == 1


def test_a_profile_is_wires_fields_and_a_snapshot_carries_no_key(proxy: StreamService) -> None:
    profile = dict(zip(wire.PROFILE_FIELDS, ("d", "gps", "u", "sensor", "g", DEV_KEY),
                       strict=True))
    proxy._op_register({"devices": [profile]})
    [snap] = proxy._op_release({"devices": ["d"]})["released"]
    assert parse_snapshot(snap) == snap and "key" not in snap
    assert set(wire.PROFILE_FIELDS) - {"key"} <= set(snap)


# --- control: wire's client against the real server -----------------------------------------

def test_control_signing_is_the_servers() -> None:
    disp = Dispatcher()
    disp.register("echo", lambda req: {"echo": req.get("x")})
    disp.register(wire.OP_PING, lambda _req: {"pong": True})
    server = ControlServer(disp, "127.0.0.1", 0, key=VM_KEY)
    server.start()
    host, port = server.address
    try:
        with wire.ControlClient(host, port, VM_KEY) as client:
            assert client.call("echo", x=1) == {"ok": True, "echo": 1}
            assert client.call("echo", x=2)["echo"] == 2 and client.n == 2
            replay = wire.sign_request(VM_KEY, client.nonce, 2, {"op": "echo", "x": 3})
            assert "stale" in client.exchange(replay)["error"]  # n already used
            forged = wire.sign_request(VM_KEY, client.nonce, 9, {"op": "echo", "x": 4})
            forged["x"] = 5  # the request changed after signing
            assert "bad request signature" in client.exchange(forged)["error"]
        with wire.ControlClient(host, port, wire.new_key()) as stranger:
            reply = stranger.call("echo", x=1)
            assert reply["ok"] is False and reply["error"].startswith(wire.AUTH_REFUSED)
            assert stranger.call(wire.OP_PING) == {"ok": True, "pong": True}  # open op
        with wire.ControlClient(host, port, VM_KEY) as other:  # a captured request elsewhere
            assert "challenge" in other.exchange(replay)["error"]
            other.nonce = str(other.exchange({"op": wire.OP_CHALLENGE})["nonce"])
            assert "bad request signature" in other.exchange(replay)["error"]
            assert other.call("echo", x=6)["echo"] == 6
        assert server.auth_refused == 5
    finally:
        server.stop()


# --- metadata: the real sink against the real application VM ------------------------------------

SPOT = {"spot": "40.1000,-74.0000", "lat": 40.1, "lon": -74.0, "free": True, "ts": 1.0}


def test_the_sinks_handshake_and_lines_are_the_application_vms(appvm: AppVmService) -> None:
    sink = MetadataSink("127.0.0.1", appvm.address[1], key=wire.sink_key(VM_KEY, "park", "px"),
                        app="park", proxy="px")
    try:
        for i in range(5):
            sink.send({**SPOT, "ts": float(i)})
        wait_until(lambda: sink.acked == 5)
    finally:
        sink.close()
    assert [json.loads(line) for line in appvm.received] == [
        {"app": "park", "src": "px", "m": {**SPOT, "ts": float(i)}} for i in range(5)]
    assert appvm.links[("park", "px")].next == 6


@pytest.mark.parametrize("app, proxy, key_for", [
    ("park", "px", ("park", "other-px")),  # a key for another proxy
    ("park", "px", ("traffic", "px")),  # a key for another application
])
def test_a_sink_with_a_key_not_its_own_is_refused(appvm: AppVmService, app: str, proxy: str,
                                                  key_for: tuple[str, str]) -> None:
    sink = MetadataSink("127.0.0.1", appvm.address[1], key=wire.sink_key(VM_KEY, *key_for),
                        app=app, proxy=proxy, retry_s=0.05)
    try:
        sink.send(SPOT)
        wait_until(lambda: sink.refused >= 1)
    finally:
        sink.close()
    assert appvm.received == [] and appvm.audit["auth_refused"] >= 1


def test_wire_replies_stay_one_line() -> None:
    frames: list[dict[str, Any]] = [{"t": "ack", "seq": 1}, {"ok": True, "s": "a\nb"}]
    for frame in frames:
        line = wire.dumps(frame)
        assert line.count(b"\n") == 1 and wire.loads(line) == frame
