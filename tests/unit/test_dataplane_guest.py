"""Issue 3, guest side: stream codec (fuzzed), classification, raw buffer, grants, each
semantic model on hand-made data, metadata schema checks, application logic, and the
stream service end to end on loopback with a reconnect in the middle."""

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
from agent.devices.emulator import Emulator, chain_step  # noqa: E402
from agent.guest.edgeiot_agent import codec  # noqa: E402
from agent.guest.edgeiot_agent.appvm import AppVmService, ParkNetApp, TrafficApp, best_route  # noqa: E402
from agent.guest.edgeiot_agent.buffer import RawBuffer  # noqa: E402
from agent.guest.edgeiot_agent.classify import ClassifyError, classify  # noqa: E402
from agent.guest.edgeiot_agent.dataplane import parse_role  # noqa: E402
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
    assert frame["t"] in ("hello", "rec")


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
    frame = codec.decode_frame(codec.record_line(seq, ts, value).rstrip(b"\n"))
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

def test_proxy_core_exactly_once():
    core = ProxyCore("px")
    core.register("d1", "heart-rate", "alice")
    state, reply = core.hello("d1")
    assert reply["next"] == 1
    line = codec.record_line(1, 1.0, {"bpm": 70}).rstrip(b"\n")
    assert core.record(state, codec.decode_frame(line), line) == {"t": "ack", "seq": 1}
    assert core.record(state, codec.decode_frame(line), line)["seq"] == 1  # duplicate
    gap = codec.record_line(3, 1.0, {"bpm": 70}).rstrip(b"\n")
    assert core.record(state, codec.decode_frame(gap), gap)["gap"] == 3
    assert (state.accepted, state.duplicates, state.next) == (1, 1, 2)
    assert state.chain == chain_step("", line)
    assert core.hello("nope")[1]["t"] == "refused"


def test_devices_resend_after_reconnect_and_nothing_is_lost_or_doubled():
    app = AppVmService("127.0.0.1", 0)
    app.start()
    app._op_configure({"app": "tr", "kind": "traffic"})
    svc = StreamService("px-test", "127.0.0.1", 0, buffer_bytes=64 * 1024)
    svc.start()
    try:
        svc._op_register({"devices": [{"id": "g", "type": "gps", "user": "u", "group": "c"},
                                      {"id": "s", "type": "speed", "user": "u", "group": "c"},
                                      {"id": "h", "type": "heart-rate", "user": "u"}]})
        svc._op_install({"app": "tr", "model": "traffic", "grants": ["gps", "speed"],
                         "sink": {"host": "127.0.0.1", "port": app.address[1]}})
        spec = {"user": "u", "proxy": "127.0.0.1", "port": svc.address[1], "rate": 400,
                "ticks": 600, "sources": [
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
        time.sleep(0.5)
        assert app.received and all(json.loads(x)["src"] == "px-test" for x in app.received)
        assert svc.core.models["tr"].gate.refused > 0  # heart rate never reached the model
    finally:
        svc.stop()
        app.stop()


def test_garbage_on_the_stream_port_is_answered_and_survived():
    svc = StreamService("px", "127.0.0.1", 0)
    svc.start()
    try:
        svc.core.register("d", "speed", "u")
        with socket.create_connection(svc.address, timeout=5) as sock:
            reader = sock.makefile("rb")
            for junk in (b"{", b"\x00\xff", b'{"t":"rec","seq":1,"ts":0,"v":{}}',
                         b'{"t":"hello","dev":"d"}', b'{"t":"rec","seq":1,"ts":0,"v":{}}',
                         b'{"t":"rec","seq":2,"ts":0,"v":{"kmh":5}}'):
                sock.sendall(junk + b"\n")
            replies = [json.loads(reader.readline())["t"] for _ in range(6)]
        assert replies == ["error", "error", "error", "welcome", "error", "ack"]
        assert svc.core.devices["d"].accepted == 1 and svc.core.frame_errors == 3
    finally:
        svc.stop()
