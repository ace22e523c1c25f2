"""Issue 3, guest side: stream codec (fuzzed), classification, raw buffer, grants, each
semantic model on hand-made data, metadata schema checks, application logic, the
stream service end to end on loopback with a reconnect in the middle, and the handover of
devices' stream state between two proxies (release, adopt, `moved`, the directory)."""

from __future__ import annotations

import base64
import json
import socket
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "agent" / "guest"))

from agent.devices import world  # noqa: E402
from agent.devices.emulator import Attachments, Emulator, chain_step, lookup, roaming  # noqa: E402
from agent.guest.edgeiot_agent import codec, wire  # noqa: E402
from agent.guest.edgeiot_agent.appvm import AppVmService, ParkNetApp, TrafficApp, best_route  # noqa: E402
from agent.guest.edgeiot_agent.buffer import RawBuffer  # noqa: E402
from agent.guest.edgeiot_agent.classify import ClassifyError, classify  # noqa: E402
from agent.guest.edgeiot_agent.control import RequestError  # noqa: E402
from agent.guest.edgeiot_agent.dataplane import parse_role  # noqa: E402
from agent.guest.edgeiot_agent.handover import SnapshotError, parse_snapshot  # noqa: E402
from agent.guest.edgeiot_agent.metadata import SchemaError, check  # noqa: E402
from agent.guest.edgeiot_agent.models import FaceMatch, ParkNet, Record, Traffic  # noqa: E402
from agent.guest.edgeiot_agent.models.faces import average_hash, hamming  # noqa: E402
from agent.guest.edgeiot_agent.models.traffic import area_of  # noqa: E402
from agent.guest.edgeiot_agent.permissions import PermissionDenied, check_grants  # noqa: E402
from agent.guest.edgeiot_agent.streams import ProxyCore, StreamService  # noqa: E402

# --- codec -------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_is_total_on_arbitrary_bytes(data):
    try:
        frame = codec.decode_frame(data)
    except codec.FrameError:
        return
    assert frame["t"] in ("hello", "rec", "auth", "ping")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() |
                           st.text(max_size=5), lambda c: st.lists(c, max_size=3) |
                           st.dictionaries(st.text(max_size=3), c, max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["t", "seq", "ts", "v", "dev"]), json_values))
def test_decoder_is_total_on_json_objects(obj):
    line = json.dumps(obj).encode()
    try:
        frame = codec.decode_frame(line)
    except codec.FrameError:
        return
    if frame["t"] == "rec":
        assert isinstance(frame["seq"], int) and frame["seq"] >= 1
        assert isinstance(frame["v"], dict)


@given(st.integers(1, 2**40), st.floats(0, 2e9), st.dictionaries(st.text(max_size=4),
                                                                   st.integers()))
def test_record_round_trip(seq, ts, value):
    frame = codec.decode_frame(wire.record_line(seq, ts, value))
    assert (frame["seq"], frame["ts"], frame["v"]) == (seq, ts, value)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=50), max_size=10), st.integers(1, 20))
def test_line_splitter_yields_lines_whatever_the_chunking(chunks, size):
    data = b"\n".join(c.replace(b"\n", b"") for c in chunks) + b"\n"
    splitter = codec.LineSplitter(max_line=40)
    out = []
    for i in range(0, len(data), size):
        out += splitter.feed(data[i:i + size])
    expected = [c.replace(b"\n", b"") for c in chunks]
    expected = [None if len(c) > 40 else c for c in expected if c.strip() or len(c) > 40]
    assert out == expected


# --- classify, buffer, permissions, metadata ---------------------------------------------

def test_classify_normalises_and_refuses():
    assert classify("gps", {"lat": 40, "lon": -74, "extra": 1}) == {"lat": 40.0, "lon": -74.0}
    for dtype, value in [("gps", {"lat": 91, "lon": 0}), ("gps", {"lat": "x", "lon": 0}),
                         ("speed", {"kmh": float("nan")}), ("heart-rate", {}),
                         ("camera", {"w": 2, "h": 2, "px": "AAAA", "lat": 0, "lon": 0}),
                         ("smell", {}), ("gps", {"lat": True, "lon": 0})]:
        with pytest.raises(ClassifyError):
            classify(dtype, value)
    px = base64.b64encode(bytes(16)).decode()
    cam = classify("camera", {"w": 4, "h": 4, "px": px, "lat": 1, "lon": 2})
    assert cam["px"] == bytes(16) and cam["w"] == 4


def test_raw_buffer_is_bounded_and_keeps_the_latest_bytes():
    buf = RawBuffer(4096)
    for i in range(1000):
        buf.append(b"%05d|" % i)
    assert buf.total_bytes == 6000 and len(buf._ring) == 4096
    assert buf.recent(12) == b"00998|00999|"
    buf.append(b"x" * 5000)
    assert buf.recent(4096) == b"x" * 4096


def test_grants():
    assert check_grants("parknet", {"gps", "ultrasonic"}, ["gps", "ultrasonic", "speed"]) == \
        frozenset({"gps", "ultrasonic"})
    with pytest.raises(PermissionDenied, match="ultrasonic"):
        check_grants("parknet", {"gps", "ultrasonic"}, ["gps"])
    with pytest.raises(PermissionDenied, match="unknown"):
        check_grants("parknet", {"gps"}, ["gps", "smell"])


def test_metadata_schema_check():
    schema = {"area": str, "degree": float, "samples": int}
    assert check({"area": "A1_2", "degree": 1, "samples": 3}, schema)
    for bad in [{"area": "A", "degree": 0.1}, {"area": "A", "degree": 0.1, "samples": 1,
                                              "lat": 40.0},
                {"area": 1, "degree": 0.1, "samples": 1}, {"area": "A", "degree": True,
                                                            "samples": 1}, []]:
        with pytest.raises(SchemaError):
            check(bad, schema)


def wait_until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert cond()


def test_push_from_another_thread_holds_the_connection_lock_and_loses_nothing():
    import threading

    from agent.guest.edgeiot_agent.lineserver import LineServer

    class Echo(LineServer):
        def new_conn(self, sock):
            self.conn = super().new_conn(sock)
            return self.conn

        def handle_line(self, conn, line):
            return line + b"\n"

    server = Echo("127.0.0.1", 0)
    server.start()
    client = socket.create_connection(server.address, timeout=5)
    try:
        wait_until(lambda: hasattr(server, "conn"))
        conn = server.conn
        with conn.lock:  # push waits for the lock the server thread takes around `out`
            pusher = threading.Thread(target=server.push, args=(conn, b"held\n"))
            pusher.start()
            pusher.join(0.2)
            assert pusher.is_alive() and b"held" not in conn.out
        pusher.join(5)
        n = 3000
        pushes = threading.Thread(target=lambda: [server.push(conn, b"p%d\n" % i)
                                                  for i in range(n)])
        pushes.start()
        client.sendall(b"".join(b"e%d\n" % i for i in range(n)))
        pushes.join(10)
        got = b""
        while got.count(b"\n") < 2 * n + 1:
            chunk = client.recv(65536)
            assert chunk, "server closed early"
            got += chunk
        lines = got.split(b"\n")[:-1]
        assert sorted(lines) == sorted([b"held"] + [b"p%d" % i for i in range(n)]
                                       + [b"e%d" % i for i in range(n)])
        client.close()
        wait_until(lambda: conn.closed)
        assert server.push(conn, b"late\n") is False
    finally:
        client.close()
        server.stop()


def test_role_from_kernel_command_line():
    assert parse_role("console=ttyS0 edgeiot.role=app edgeiot.name=x") == "app"
    assert parse_role("console=ttyS0") == "proxy"
    assert parse_role("edgeiot.role=evil") == "proxy"


# --- models on hand-made data ------------------------------------------------------------

def rec(dtype, ts, value, group="car", dev="d"):
    return Record(dev, "alice", dtype, 1, ts, value, group)


def test_parknet_joins_by_time_whatever_the_arrival_order():
    model = ParkNet()
    assert model.feed(rec("ultrasonic", 1.0, {"range_cm": 300.0})) == []  # waits for a fix
    out = model.feed(rec("gps", 1.0, {"lat": 40.10001, "lon": -74.00002}))
    assert out == [{"spot": "40.1000,-74.0000", "lat": 40.1, "lon": -74.0, "free": True,
                    "ts": 1.0}]
    model.feed(rec("gps", 2.0, {"lat": 40.1, "lon": -73.9999}))
    assert model.feed(rec("ultrasonic", 2.0, {"range_cm": 50.0}))[0]["free"] is False
    assert model.feed(rec("ultrasonic", 2.0, {"range_cm": 55.0})) == []  # no change, no news
    other = model.feed(rec("gps", 3.0, {"lat": 41.0, "lon": 0.0}, group="other-car"))
    assert other == []  # another car's fix never pairs with this car's readings


def test_traffic_degree_per_area():
    model = Traffic({"emit_every": 3})
    out = []
    for i in range(6):
        out += model.feed(rec("gps", float(i), {"lat": 40.105, "lon": -73.985}))
        out += model.feed(rec("speed", float(i), {"kmh": 10.0}))
    assert out[0] == {"area": "A4010_-7399", "degree": 0.8, "samples": 1, "ts": 0.0}
    assert all(m["area"] == area_of(40.105, -73.985) for m in out)
    assert 1 < len(out) < 6


def test_face_matching_finds_the_child_only():
    target = world.face_image(7, variant=0)
    model = FaceMatch({"target_px": base64.b64encode(target).decode(), "w": 32, "h": 32})
    hits = []
    for variant in range(1, 30):
        for seed in (7, 8, 9, 10):
            px = world.face_image(seed, variant)
            hits += [(seed, m) for m in model.feed(rec(
                "camera", float(variant), {"w": 32, "h": 32, "px": px, "lat": 1.0,
                                           "lon": 2.0}, dev="cam"))]
    assert {seed for seed, _ in hits} == {7} and len(hits) == 29
    assert hits[0][1]["camera"] == "cam" and set(hits[0][1]) == set(FaceMatch.SCHEMA)
    assert hamming(average_hash(world.face_image(7, 1), 32, 32),
                   average_hash(world.face_image(8, 1), 32, 32)) > 15


# --- application logic -------------------------------------------------------------------

def test_parknet_app_request_and_reserve():
    app = ParkNetApp()
    for spot, lon, free in (("a", -74.0, True), ("b", -73.9990, True), ("c", -73.9999, False)):
        app.ingest("px", {"spot": spot, "lat": 40.1, "lon": lon, "free": free, "ts": 1.0})
    assert [s["spot"] for s in app.query({"q": "request", "lat": 40.1, "lon": -73.9998})
            ["spots"]] == ["a", "b"]
    app.query({"q": "reserve", "spot": "a", "user": "u"})
    with pytest.raises(Exception, match="not free"):
        app.query({"q": "reserve", "spot": "a", "user": "v"})
    assert app.query({"q": "request", "lat": 40.1, "lon": -74.0})["spots"][0]["spot"] == "b"


def test_best_route_avoids_congestion():
    path, cost = best_route({"A0_1": 0.9}, "A0_0", "A0_2")
    assert "A0_1" not in path and path[0] == "A0_0" and path[-1] == "A0_2" and cost == 4.0
    assert best_route({}, "A0_0", "A0_2") == (["A0_0", "A0_1", "A0_2"], 2.0)
    app = TrafficApp()
    app.ingest("p1", {"area": "A0_1", "degree": 1.0, "samples": 10, "ts": 1})
    app.ingest("p2", {"area": "A0_1", "degree": 0.0, "samples": 30, "ts": 1})
    assert app.degrees() == {"A0_1": 0.25}
    with pytest.raises(Exception, match="route needs"):
        app.query({"q": "route", "from": "A0_0", "to": "A9999_9999"})


# --- the stream service on loopback ------------------------------------------------------

KEY = "d0" * 32
APP_VM_KEY = "a1" * 32


def authed(core, dev, key=KEY):
    """hello and auth on a core, as the stream service does: the state and the welcome."""
    state, challenge = core.hello(dev)
    assert challenge["t"] == "challenge", challenge
    return state, core.authenticate(state, challenge["nonce"],
                                    wire.device_proof(key, dev, challenge["nonce"]))


def test_proxy_core_exactly_once():
    core = ProxyCore("px")
    core.register("d1", "heart-rate", "alice", key=KEY)
    state, reply = authed(core, "d1")
    assert reply["t"] == "welcome" and reply["next"] == 1
    line = wire.record_line(1, 1.0, {"bpm": 70})
    assert core.record(state, codec.decode_frame(line), line) == {"t": "ack", "seq": 1}
    assert core.record(state, codec.decode_frame(line), line)["seq"] == 1  # duplicate
    gap = wire.record_line(3, 1.0, {"bpm": 70})
    assert core.record(state, codec.decode_frame(gap), gap)["gap"] == 3
    assert (state.accepted, state.duplicates, state.next) == (1, 1, 2)
    assert state.chain == chain_step("", line)
    assert core.hello("nope")[1]["t"] == "refused"
    assert authed(core, "d1", key="ee" * 32)[1]["t"] == "refused"  # a wrong key
    assert core.auth_refused == 2 and (state.next, state.accepted) == (2, 1)


def test_devices_resend_after_reconnect_and_nothing_is_lost_or_doubled():
    app = AppVmService("127.0.0.1", 0, key=APP_VM_KEY)
    app.start()
    app._op_configure({"app": "tr", "kind": "traffic"})
    svc = StreamService("px-test", "127.0.0.1", 0, buffer_bytes=64 * 1024)
    svc.start()
    try:
        svc._op_register({"devices": [
            {"id": "g", "type": "gps", "user": "u", "group": "c", "key": KEY},
            {"id": "s", "type": "speed", "user": "u", "group": "c", "key": KEY},
            {"id": "h", "type": "heart-rate", "user": "u", "key": KEY}]})
        svc._op_install({"app": "tr", "model": "traffic", "grants": ["gps", "speed"],
                         "sink": {"host": "127.0.0.1", "port": app.address[1],
                                  "key": wire.sink_key(APP_VM_KEY, "tr", "px-test")}})
        spec = {"user": "u", "proxy": "127.0.0.1", "port": svc.address[1], "rate": 400,
                "ticks": 600, "keys": dict.fromkeys("gsh", KEY), "sources": [
                    {"kind": "drive", "gps": "g", "speed": "s", "route": [[0, 0], [0, 1]],
                     "congested": [[0, 1]]}, {"kind": "heart", "device": "h"}]}
        emulator = Emulator(spec)
        import threading
        runner = threading.Thread(target=lambda: setattr(emulator, "report", emulator.run()))
        runner.start()
        for _ in range(3):  # cut every device connection, as a migration's hiccup might
            time.sleep(0.3)
            for dev in emulator.devices.values():
                with dev.lock:
                    dev._drop_socket()
        runner.join(timeout=60)
        report = emulator.report
        stats = svc.core.stats()["devices"]
        for dev in ("g", "s", "h"):
            assert report["devices"][dev]["sent"] == 600 == stats[dev]["accepted"]
            assert stats[dev]["chain"] == report["devices"][dev]["chain"]
            assert report["devices"][dev]["connects"] >= 2
        sink = svc.core.models["tr"].sink
        wait_until(lambda: sink.pending() == 0)
        assert app.received and all(json.loads(x)["src"] == "px-test" for x in app.received)
        assert len(app.received) == sink.acked == svc.core.models["tr"].emitted
        assert app.audit["duplicates"] == app.audit["lost"] == app.audit["schema_refused"] == 0
        assert svc.core.models["tr"].gate.refused > 0  # heart rate never reached the model
    finally:
        svc.stop()
        app.stop()


def test_garbage_on_the_stream_port_is_answered_and_survived():
    svc = StreamService("px", "127.0.0.1", 0)
    svc.start()
    try:
        svc.core.register("d", "speed", "u", key=KEY)
        with socket.create_connection(svc.address, timeout=5) as sock:
            reader = sock.makefile("rb")
            for junk in (b"{", b"\x00\xff", b'{"t":"rec","seq":1,"ts":0,"v":{}}',
                         "{\"t\":\"hello\",\"dev\":\"d\"}".encode("utf-16"),
                         b'{"t":"hello","dev":"d"}'):
                sock.sendall(junk + b"\n")
            replies = [json.loads(reader.readline()) for _ in range(5)]
            assert [r["t"] for r in replies] == ["error"] * 4 + ["challenge"]
            proof = wire.device_proof(KEY, "d", replies[-1]["nonce"])
            for line in (b'{"t":"auth","dev":"d","mac":"%s"}' % proof.encode(),
                         b'{"t":"rec","seq":1,"ts":0,"v":{}}',
                         b'{"t":"rec","seq":2,"ts":0,"v":{"kmh":5}}'):
                sock.sendall(line + b"\n")
            replies = [json.loads(reader.readline())["t"] for _ in range(3)]
        assert replies == ["welcome", "error", "ack"]
        assert svc.core.devices["d"].accepted == 1 and svc.core.frame_errors == 4
    finally:
        svc.stop()


def test_commands_reach_a_connected_actuator_and_only_an_actuator():
    svc = StreamService("px", "127.0.0.1", 0)
    svc.start()
    try:
        svc._op_register({"devices": [
            {"id": "sw", "type": "switch", "user": "u", "role": "actuator", "key": KEY},
            {"id": "h", "type": "heart-rate", "user": "u", "key": KEY}]})
        with pytest.raises(RequestError, match="not connected"):
            svc._op_actuate({"device": "sw", "command": {"on": 1}})
        emulator = Emulator({"user": "u", "proxy": "127.0.0.1", "port": svc.address[1],
                             "rate": 50, "ticks": 100, "keys": {"sw": KEY, "h": KEY},
                             "sources": [
                                 {"kind": "actuator", "device": "sw"},
                                 {"kind": "heart", "device": "h"}]})
        import threading
        runner = threading.Thread(target=lambda: setattr(emulator, "report", emulator.run()))
        runner.start()
        deadline = time.monotonic() + 5
        while svc.core.devices["sw"].conn is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert svc._op_actuate({"device": "sw", "command": {"on": 1}}) == {"sent": True}
        for bad, message in (({"device": "h", "command": {}}, "not a registered actuator"),
                             ({"device": "nope", "command": {}}, "not a registered actuator"),
                             ({"device": "sw", "command": "on"}, "must be an object")):
            with pytest.raises(RequestError, match=message):
                svc._op_actuate(bad)
        runner.join(timeout=30)
        assert [c["cmd"] for c in emulator.report["commands"]] == [{"on": 1}]
        assert emulator.report["devices"]["h"]["acked"] == 100  # the sensor unaffected
    finally:
        svc.stop()


# --- handover: stream state moves between proxies -----------------------------------------

def feed(core, state, seq, bpm=70):
    line = wire.record_line(seq, float(seq), {"bpm": bpm})
    return core.record(state, codec.decode_frame(line), line), line


def test_release_stops_accepting_and_adopt_continues_the_sequence():
    a, b = ProxyCore("px-a"), ProxyCore("px-b")
    a.register("d1", "heart-rate", "alice", group="body", key=KEY)
    state, _ = authed(a, "d1")
    chain = ""
    for seq in (1, 2, 3):
        _, line = feed(a, state, seq)
        chain = chain_step(chain, line)
    feed(a, state, 2)  # a duplicate, counted
    b.register("d1", "heart-rate", "alice", held=True, key=KEY)
    held, reply = b.hello("d1")
    assert held is None and reply["t"] == "moved" and "ask the directory" in reply["error"]
    [(snap, conn)] = a.release(["d1"])
    assert conn is None and (snap["next"], snap["accepted"], snap["duplicates"]) == (4, 3, 1)
    assert snap["chain"] == chain and (snap["group"], snap["role"]) == ("body", "sensor")
    assert feed(a, state, 4)[0]["t"] == "moved"  # nothing accepted after the snapshot
    assert a.hello("d1")[1]["t"] == "moved" and a.devices["d1"].accepted == 3
    assert a.release(["d1"]) == [(snap, None)]  # idempotent: the state stays as released
    assert "key" not in snap  # a key never travels in a snapshot
    assert b.adopt([snap]) == 1
    state_b, welcome = authed(b, "d1")
    assert welcome["next"] == 4 and welcome["proxy"] == "px-b"
    reply, line = feed(b, state_b, 4)
    assert reply == {"t": "ack", "seq": 4}
    assert state_b.chain == chain_step(chain, line) and state_b.accepted == 4
    assert feed(b, state_b, 3)[0] == {"t": "ack", "seq": 4} and state_b.duplicates == 2


def test_adopt_refuses_a_device_served_here_and_bad_snapshots_all_or_none():
    a, b = ProxyCore("px-a"), ProxyCore("px-b")
    for core in (a, b):
        core.register("d1", "heart-rate", "alice")
    a.register("d2", "speed", "alice")
    snaps = [s for s, _ in a.release(["d1", "d2"])]
    with pytest.raises(RequestError, match="served here"):
        b.adopt(snaps)  # b serves d1 itself: two proxies must never accept one stream
    assert "d2" not in b.devices  # all or none
    b.release(["d1"])
    with pytest.raises(RequestError, match="bad snapshot"):
        b.adopt([snaps[0], {**snaps[1], "next": 0}])
    assert b.devices["d1"].away and "d2" not in b.devices
    with pytest.raises(RequestError, match="another profile"):
        b.adopt([{**snaps[0], "type": "speed"}])
    with pytest.raises(RequestError, match="unknown devices"):
        a.release(["d1", "nope"])
    assert b.adopt(snaps) == 2 and not b.devices["d1"].away


def test_snapshot_format_is_checked():
    good = {"id": "d", "type": "gps", "user": "u", "role": "sensor", "group": "u", "next": 5,
            "chain": "ab" * 16, "accepted": 3, "duplicates": 9, "invalid": 1, "raw_bytes": 99}
    assert parse_snapshot(good) == good
    assert parse_snapshot({**good, "group": None})["group"] == "u"
    for bad in ({**good, "next": 4}, {**good, "chain": ""}, {**good, "chain": "XYZ"},
                {**good, "accepted": -1}, {**good, "next": True}, {**good, "type": "smell"},
                {**good, "id": ""}, {**good, "user": 3}, {**good, "role": "boss"},
                {**good, "next": 1, "accepted": 0, "invalid": 0}, [good]):
        with pytest.raises(SnapshotError):
            parse_snapshot(bad)
    fresh = {**good, "next": 1, "accepted": 0, "invalid": 0, "chain": ""}
    assert parse_snapshot(fresh)["next"] == 1


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["ok", "bad", "dup"]), max_size=30))
def test_every_real_snapshot_is_adoptable(ops):
    core = ProxyCore("px")
    core.register("d", "heart-rate", "u", key=KEY)
    state, _ = authed(core, "d")
    for op in ops:
        if op == "dup" and state.next > 1:
            feed(core, state, state.next - 1)
        else:
            feed(core, state, state.next, bpm=70 if op == "ok" else "fast")
    [(snap, _)] = core.release(["d"])
    assert parse_snapshot(snap) == snap


def test_directory_lookup_prefers_the_device_entry():
    directory = {"users": {"u": {"proxy": "10.0.0.1", "port": 7071}},
                 "devices": {"d2": {"proxy": "10.0.0.2", "port": 7071}}}
    assert lookup(directory, "u", "d1")["proxy"] == "10.0.0.1"
    assert lookup(directory, "u", "d2")["proxy"] == "10.0.0.2"
    assert lookup({"users": {"u": {"proxy": "x"}}}, "u", "d2")["proxy"] == "x"
    with pytest.raises(ValueError, match="no proxy"):
        lookup({"users": {}}, "u", "d1")


def test_radios_that_moved_are_the_ones_attached_elsewhere_now(tmp_path):
    attached = {"g": "/run/netns/fog1", "s": "/run/netns/fog1", "h": None}
    assert roaming(attached, {"g": "/run/netns/fog2", "s": "/run/netns/fog1",
                              "h": "/run/netns/fog2"}) == ["g"]  # h never connected yet
    assert roaming(attached, {}) == []
    path = tmp_path / "attach.json"
    watch = Attachments(str(path))
    assert watch.poll() is None and watch.of("g") is None  # no file yet
    path.write_text(json.dumps({"g": "/run/netns/fog1"}))
    assert watch.poll() == {"g": "/run/netns/fog1"} and watch.poll() is None  # unchanged
    path.write_text("{")
    assert watch.poll() is None and watch.of("g") == "/run/netns/fog1"  # half-written
    assert Attachments(None).poll() is None


def write_directory(path, user_port, devices):
    content = {"users": {"u": {"proxy": "127.0.0.1", "port": user_port}},
               "devices": {d: {"proxy": "127.0.0.1", "port": port} for d, port in devices.items()}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(content))
    tmp.replace(path)


def hand_over(source, target, devs, directory, home_port, ports):
    """The orchestrator's order: held on the target, directory, release, adopt."""
    target._op_register({"devices": [{"id": d, "type": t, "user": "u", "key": KEY}
                                     for d, t in devs.items()], "held": True})
    write_directory(directory, home_port, ports)
    snaps = source._op_release({"devices": list(devs)})["released"]
    time.sleep(0.05)  # the devices reconnect meanwhile and are told `moved`
    target._op_adopt({"devices": snaps})
    return snaps


def test_devices_follow_a_decomposition_and_composition_exactly_once(tmp_path):
    static, mobile = (StreamService(n, "127.0.0.1", 0) for n in ("px-s", "px-m"))
    for svc in (static, mobile):
        svc.start()
    directory = tmp_path / "directory.json"
    home = static.address[1]
    try:
        static._op_register({"devices": [{"id": "g", "type": "gps", "user": "u", "key": KEY},
                                         {"id": "s", "type": "speed", "user": "u", "key": KEY},
                                         {"id": "h", "type": "heart-rate", "user": "u",
                                          "key": KEY}]})
        write_directory(directory, home, {})
        spec = {"user": "u", "directory": str(directory), "rate": 200, "ticks": 800,
                "keys": dict.fromkeys("gsh", KEY),
                "drain_s": 20, "sources": [
                    {"kind": "drive", "gps": "g", "speed": "s", "route": [[0, 0], [0, 1]]},
                    {"kind": "heart", "device": "h"}]}
        emulator = Emulator(spec)
        import threading
        runner = threading.Thread(target=lambda: setattr(emulator, "report", emulator.run()))
        runner.start()
        time.sleep(1.0)
        moving = {"g": "gps", "s": "speed"}
        out = hand_over(static, mobile, moving, directory, home,
                        dict.fromkeys(moving, mobile.address[1]))
        time.sleep(1.0)
        back = hand_over(mobile, static, moving, directory, home, {})
        runner.join(timeout=60)
        report = emulator.report["devices"]
        stats = static.core.stats()["devices"]
        for dev in ("g", "s", "h"):
            assert report[dev]["sent"] == report[dev]["acked"] == 800 == stats[dev]["accepted"]
            assert stats[dev]["next"] == 801 and stats[dev]["chain"] == report[dev]["chain"]
            assert stats[dev]["duplicates"] == 0 and not stats[dev]["away"]
        for dev in moving:
            assert report[dev]["served_by"] == ["px-s", "px-m", "px-s"]
            assert report[dev]["moved"] >= 1 and report[dev]["max_gap_s"] < 2.0
            on_mobile = mobile.core.devices[dev]
            assert on_mobile.away and on_mobile.accepted > next(
                x["accepted"] for x in out if x["id"] == dev) > 0
            assert next(x for x in back if x["id"] == dev)["accepted"] == on_mobile.accepted
        assert report["h"]["served_by"] == ["px-s"] and "h" not in mobile.core.devices
    finally:
        static.stop()
        mobile.stop()
