"""Peers that are not who they claim, over real loopback sockets.

Device streams: an impostor using a registered device's ID (IDs are guessable) is refused
and disturbs nothing — not the real device's connection, its `next`, its chain, nor the
actuator commands meant for it. Metadata links: only a proxy holding the sink key the
orchestrator derived for (application, proxy) gets in; forged, unauthenticated and
schema-breaking lines are refused and counted; a link cut over and over still delivers
every line exactly once.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.devices.emulator import Device
from agent.guest.edgeiot_agent import wire
from agent.guest.edgeiot_agent.appvm import AppVmService
from agent.guest.edgeiot_agent.metadata import MetadataSink
from agent.guest.edgeiot_agent.streams import StreamService
from tests.unit.relay import Relay

DEV_KEY = wire.new_key()
VM_KEY = wire.new_key()


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cond()


class Peer:
    """A raw client speaking JSON lines."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=5)
        self.reader = self.sock.makefile("rb")

    def send(self, frame: dict[str, Any] | bytes) -> None:
        self.sock.sendall(frame if isinstance(frame, bytes) else wire.dumps(frame))

    def recv(self) -> dict[str, Any]:
        line = self.reader.readline()
        return json.loads(line) if line else {}

    def ask(self, frame: dict[str, Any] | bytes) -> dict[str, Any]:
        self.send(frame)
        return self.recv()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def proxy() -> Iterator[StreamService]:
    svc = StreamService("px", "127.0.0.1", 0)
    svc.start()
    svc._op_register({"devices": [
        {"id": "sw", "type": "switch", "user": "u", "role": "actuator", "key": DEV_KEY},
        {"id": "hr", "type": "heart-rate", "user": "u", "key": DEV_KEY}]})
    try:
        yield svc
    finally:
        svc.stop()


# --- device streams ------------------------------------------------------------------------

def test_an_impostor_disturbs_neither_the_stream_nor_the_commands(proxy: StreamService) -> None:
    commands: list[Any] = []
    real = Device("sw", lambda: proxy.address, key=DEV_KEY,
                  on_command=lambda dev, cmd: commands.append(cmd))
    heart = Device("hr", lambda: proxy.address, key=DEV_KEY)
    real.start()
    heart.start()
    try:
        for i in range(50):
            heart.emit(float(i), {"bpm": 70})
        wait_until(lambda: heart.acked == 50 and proxy.core.devices["sw"].conn is not None)
        real_conn = proxy.core.devices["sw"].conn
        for dev in ("sw", "hr"):
            impostor = Peer(proxy.address)
            challenge = impostor.ask({"t": "hello", "dev": dev})
            assert challenge["t"] == "challenge"  # a challenge costs the proxy nothing
            assert impostor.ask({"t": "rec", "seq": 51, "ts": 0, "v": {"bpm": 1}})["t"] == \
                "error"  # no records before the proof
            forged = wire.device_proof(wire.new_key(), dev, challenge["nonce"])
            assert impostor.ask({"t": "auth", "dev": dev, "mac": forged})["t"] == "refused"
            assert impostor.recv() == {}  # and hung up on
            impostor.close()
        replay = Peer(proxy.address)  # a proof captured for another nonce
        replay.ask({"t": "hello", "dev": "hr"})
        old = wire.device_proof(DEV_KEY, "hr", "00" * 16)
        assert replay.ask({"t": "auth", "dev": "hr", "mac": old})["t"] == "refused"
        replay.close()
        assert proxy.core.devices["sw"].conn is real_conn
        assert proxy._op_actuate({"device": "sw", "command": {"on": 1}}) == {"sent": True}
        wait_until(lambda: commands == [{"on": 1}])
        for i in range(50, 100):
            heart.emit(float(i), {"bpm": 71})
        wait_until(lambda: heart.acked == 100)
    finally:
        real.stop()
        heart.stop()
    state = proxy.core.devices["hr"]
    assert (state.accepted, state.next, state.invalid, state.duplicates) == (100, 101, 0, 0)
    assert state.chain == heart.chain and heart.reconnects == 1
    assert proxy.core.auth_refused == 3


def test_a_device_known_only_from_a_snapshot_cannot_authenticate(proxy: StreamService) -> None:
    [snap] = proxy._op_release({"devices": ["hr"]})["released"]
    other = StreamService("px2", "127.0.0.1", 0)
    other.start()
    try:
        other._op_adopt({"devices": [snap]})  # adopted without a registration: no key
        peer = Peer(other.address)
        challenge = peer.ask({"t": "hello", "dev": "hr"})
        proof = wire.device_proof(DEV_KEY, "hr", challenge["nonce"])
        assert peer.ask({"t": "auth", "dev": "hr", "mac": proof})["t"] == "refused"
        peer.close()
        other._op_register({"devices": [{"id": "hr", "type": "heart-rate", "user": "u",
                                         "key": DEV_KEY}], "held": True})
        dev = Device("hr", lambda: other.address, key=DEV_KEY)
        dev.start()
        try:
            dev.emit(1.0, {"bpm": 70})
            wait_until(lambda: dev.acked == 1)
        finally:
            dev.stop()
        assert other.core.devices["hr"].accepted == 1
    finally:
        other.stop()


# --- metadata links ------------------------------------------------------------------------------

@pytest.fixture
def appvm() -> Iterator[AppVmService]:
    svc = AppVmService("127.0.0.1", 0, key=VM_KEY)
    svc.start()
    svc._op_configure({"app": "tr", "kind": "traffic"})
    try:
        yield svc
    finally:
        svc.stop()


def area(i: int) -> dict[str, Any]:
    return {"area": f"A{i}_{-i}", "degree": 0.5, "samples": 1 + i % 7, "ts": float(i)}


def test_a_link_cut_again_and_again_delivers_every_line_exactly_once(appvm: AppVmService) -> None:
    relay = Relay(appvm.address)
    sink = MetadataSink(*relay.address, key=wire.sink_key(VM_KEY, "tr", "px"), app="tr",
                        proxy="px", retry_s=0.02)
    try:
        for i in range(3000):
            sink.send(area(i))
            if i % 500 == 250:
                relay.cut()
        wait_until(lambda: sink.pending() == 0, 30)
    finally:
        sink.close()
        relay.close()
    got = [json.loads(line) for line in appvm.received]
    assert got == [{"app": "tr", "src": "px", "m": area(i)} for i in range(3000)]
    assert appvm.audit["lost"] == 0 and sink.reconnects >= 3 and sink.acked == 3000
    assert appvm.links[("tr", "px")].next == 3001


def test_forged_and_unauthenticated_metadata_is_refused_and_counted(appvm: AppVmService) -> None:
    cases = [
        ([{"t": "meta", "seq": 1, "m": area(1)}], "unauthenticated"),
        ([b'{"app":"tr","src":"px","m":{"area":"x"}}\n'], "unauthenticated"),  # the old format
        ([{"t": "hello", "app": "nope", "proxy": "px", "epoch": "e"}], "unknown_app"),
        ([b"[" * 10000 + b"\n"], "bad_lines"),
        ([b"\xff\xfe{\x00}\x00\n"], "bad_lines"),
    ]
    for frames, counter in cases:
        peer = Peer(appvm.address)
        before = appvm.audit[counter]
        for frame in frames:
            peer.send(frame)
        assert peer.recv()["t"] == "refused" and peer.recv() == {}
        assert appvm.audit[counter] == before + 1
        peer.close()
    peer = Peer(appvm.address)  # right names, wrong key
    nonce = peer.ask({"t": "hello", "app": "tr", "proxy": "px", "epoch": "e1"})["nonce"]
    forged = wire.sink_proof(wire.new_key(), "tr", "px", nonce)
    assert peer.ask({"t": "auth", "mac": forged})["t"] == "refused"
    peer.close()
    assert appvm.audit["auth_refused"] == 1 and appvm.received == []
    assert appvm.links == {}


def authenticated(appvm: AppVmService, epoch: str = "e1") -> Peer:
    peer = Peer(appvm.address)
    nonce = peer.ask({"t": "hello", "app": "tr", "proxy": "px", "epoch": epoch})["nonce"]
    proof = wire.sink_proof(wire.sink_key(VM_KEY, "tr", "px"), "tr", "px", nonce)
    welcome = peer.ask({"t": "auth", "mac": proof})
    assert welcome["t"] == "welcome", welcome
    return peer


def test_lines_that_break_the_schema_are_refused_and_queries_still_work(
        appvm: AppVmService) -> None:
    peer = authenticated(appvm)
    bad = [{**area(1), "area": "garbage"}, {**area(1), "degree": 7}, {**area(1), "x": 1},
           {**area(1), "samples": True}, {**area(1), "area": "A99999999_1"}, "not a dict"]
    for seq, meta in enumerate(bad, 1):
        reply = peer.ask({"t": "meta", "seq": seq, "m": meta})
        assert reply["t"] == "error" and reply["seq"] == seq and "schema" in reply["error"]
        assert peer.recv() == {"t": "ack", "seq": seq}  # consumed: resending cannot fix it
    assert peer.ask({"t": "meta", "seq": 7, "m": area(3)}) == {"t": "ack", "seq": 7}
    assert peer.ask({"t": "meta", "seq": 7, "m": area(4)}) == {"t": "ack", "seq": 7}  # dup
    peer.close()
    assert appvm.audit["schema_refused"] == len(bad) and appvm.audit["duplicates"] == 1
    assert [json.loads(x)["m"] for x in appvm.received] == [area(3)]
    route = appvm._op_query({"app": "tr", "q": "route", "from": "A0_0", "to": "A0_3"})
    assert route["route"][0] == "A0_0"


def test_a_new_epoch_starts_over_and_the_old_one_resumes(appvm: AppVmService) -> None:
    peer = authenticated(appvm, "e1")
    assert peer.ask({"t": "meta", "seq": 1, "m": area(1)}) == {"t": "ack", "seq": 1}
    peer.close()
    peer = authenticated(appvm, "e1")  # the same sink after a reset: resumes at 2
    assert peer.ask({"t": "meta", "seq": 1, "m": area(1)}) == {"t": "ack", "seq": 1}
    peer.close()
    peer = Peer(appvm.address)
    nonce = peer.ask({"t": "hello", "app": "tr", "proxy": "px", "epoch": "e2"})["nonce"]
    proof = wire.sink_proof(wire.sink_key(VM_KEY, "tr", "px"), "tr", "px", nonce)
    assert peer.ask({"t": "auth", "mac": proof}) == {"t": "welcome", "next": 1}
    assert peer.ask({"t": "meta", "seq": 1, "m": area(2)}) == {"t": "ack", "seq": 1}
    peer.close()
    assert [json.loads(x)["m"] for x in appvm.received] == [area(1), area(2)]


def test_an_application_vm_without_a_key_refuses_every_sink() -> None:
    keyless = AppVmService("127.0.0.1", 0, key=None)
    keyless.start()
    keyless._op_configure({"app": "tr", "kind": "traffic"})
    try:
        peer = Peer(keyless.address)
        nonce = peer.ask({"t": "hello", "app": "tr", "proxy": "px", "epoch": "e"})["nonce"]
        proof = wire.sink_proof(wire.sink_key("00" * 32, "tr", "px"), "tr", "px", nonce)
        assert peer.ask({"t": "auth", "mac": proof})["t"] == "refused"
        peer.close()
    finally:
        keyless.stop()
