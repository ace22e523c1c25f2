"""Control-plane adapter without a lab: updates recorded, actions applied and logged,
failures rolled back in the engine (and the rest of the update skipped, the engine re-read
from the records), the line-JSON endpoint, listen-address checks; the pure parts of
decomposition/composition: who serves a device after handovers, the directory, the
engine's view from the records, the models a mobile part gets, snapshot bookkeeping."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from orchestrator.edge.apps import models_to_copy
from orchestrator.edge.control import (
    ControlPlane,
    LocationServer,
    check_listen_address,
    mme_from_store,
    parse_update,
    proxies_from_store,
)
from orchestrator.edge.handover import check_released, newest, progress
from orchestrator.edge.proxies import HANDOVER_EVENT, assignments, directory, elsewhere
from orchestrator.errors import OrchestratorError, UserError
from orchestrator.lab.controller.api import RelayAuth
from orchestrator.model.controller import (
    Action,
    ConstantDwell,
    Controller,
    ControlParams,
    Proxy,
    TmigCache,
)
from orchestrator.model.mme import LocationUpdate, Mme
from orchestrator.store import Store, VmRecord


class Recorder:
    def __init__(self, fail: str | None = None) -> None:
        self.done: list[Action] = []
        self.fail = fail

    def apply(self, action: Action) -> dict[str, object]:
        self.done.append(action)
        if action.kind == self.fail:
            raise OrchestratorError("boom")
        return {"status": "ok"}


def plane(tmp_path: Path, fail: str | None = None,
          owners: dict[str, str] | None = None) -> tuple[ControlPlane, Recorder, Store]:
    store = Store(tmp_path / "r.sqlite")
    mme = Mme.from_maps({"b1": "fog1", "b2": "fog2"}, owners or {"hr": "alice"})
    ctl = Controller(ControlParams(r_data_bps=1e6, r_mig_bps=1e7), TmigCache(),
                     ConstantDwell(600.0), mme, clock=lambda: 0.0)
    rec = Recorder(fail)
    return ControlPlane(ctl, rec, store, clock=lambda: 5.0), rec, store


def test_updates_recorded_and_decisions_logged(tmp_path: Path) -> None:
    cp, rec, store = plane(tmp_path)
    cp.handle(LocationUpdate("hr", "b1", 1.0))
    out = cp.handle(LocationUpdate("hr", "b2", 2.0))
    assert [a.kind for a in rec.done] == ["place", "migrate"]
    assert out[0]["verdict"] == "migrate" and out[0]["result"] == {"status": "ok"}
    events = store.events("decision")
    assert [e["data"]["verdict"] for e in events] == ["place", "migrate"]
    assert events[1]["data"]["threshold_s"] > events[1]["data"]["t_mig_s"]
    assert [(loc["device"], loc["bs_id"]) for loc in store.locations()] == [("hr", "b1"),
                                                                        ("hr", "b2")]


def test_failed_migration_rolls_back_engine_state(tmp_path: Path) -> None:
    cp, _rec, store = plane(tmp_path, fail="migrate")
    cp.handle(LocationUpdate("hr", "b1", 1.0))
    [out] = cp.handle(LocationUpdate("hr", "b2", 2.0))
    assert out["result"]["status"] == "failed"
    assert cp.controller.proxies["alice"][0].node == "fog1"
    assert store.events("decision")[-1]["data"]["result"]["error"] == "boom"


def test_unknown_bs_is_a_user_error(tmp_path: Path) -> None:
    cp, _rec, _store = plane(tmp_path)
    with pytest.raises(UserError, match="base station"):
        cp.handle(LocationUpdate("hr", "nope", 1.0))


def test_mme_from_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.sqlite")
    store.add_base_station("b1", "fog1", ["fog9"])
    store.add_location("hr", "b1", 1.0)
    mme = mme_from_store(store)
    assert mme.stations["b1"].nodes == ("fog1", "fog9")
    assert mme.where("hr") is None  # not a registered device: history ignored


def test_parse_update_and_listen_checks() -> None:
    upd = parse_update(b'{"device": "hr", "bs": "b1", "members": ["gps"]}', lambda: 9.0)
    assert upd == LocationUpdate("hr", "b1", 9.0, ("gps",))
    for bad in (b"{", b'{"bs": "b1"}', b"[1]"):
        with pytest.raises(UserError):
            parse_update(bad, lambda: 0.0)
    assert check_listen_address("127.0.0.1", set()) == "127.0.0.1"
    assert check_listen_address("10.77.0.1", {"10.77.0.1"}) == "10.77.0.1"
    with pytest.raises(UserError):
        check_listen_address("0.0.0.0", set())
    with pytest.raises(UserError):
        check_listen_address("nope", set())


def signed_lines(auth: RelayAuth, *updates: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(auth.sign(u)).encode() + b"\n" for u in updates)


def test_location_server_round_trip_with_the_real_store(tmp_path: Path) -> None:
    """The plane's store is a real SQLite connection opened in this thread; the server
    applies updates in the thread that runs serve_forever() (this one), so the records get
    every location and decision."""
    cp, _rec, store = plane(tmp_path)
    auth = RelayAuth(b"s" * 32)
    server = LocationServer(("127.0.0.1", 0), cp, RelayAuth(auth.key))
    replies: list[dict[str, Any]] = []

    def client() -> None:
        try:
            with socket.create_connection(server.server_address, timeout=5) as sock:
                sock.sendall(signed_lines(auth, {"device": "hr", "bs": "b1", "at": 1},
                                          {"device": "x", "bs": "b1"},
                                          {"device": "hr", "bs": "b2", "at": 2}))
                lines = sock.makefile("rb")
                replies.extend(json.loads(lines.readline()) for _ in range(3))
        finally:
            server.shutdown()

    threading.Thread(target=client, daemon=True).start()
    server.serve_forever()
    server.server_close()
    assert replies[0]["ok"] and replies[0]["actions"][0]["verdict"] == "place"
    assert not replies[1]["ok"] and "unknown device" in replies[1]["error"]
    assert replies[2]["actions"][0]["verdict"] == "migrate"
    assert [(loc["device"], loc["bs_id"]) for loc in store.locations()] == [
        ("hr", "b1"), ("hr", "b2")]
    assert [e["data"]["verdict"] for e in store.events("decision")] == ["place", "migrate"]


def test_location_server_refuses_unsigned_forged_and_replayed_lines(tmp_path: Path) -> None:
    cp, _rec, store = plane(tmp_path)
    auth = RelayAuth(b"s" * 32)
    server = LocationServer(("127.0.0.1", 0), cp, RelayAuth(auth.key))
    signed = auth.sign({"device": "hr", "bs": "b1", "at": 1})
    forged = {**auth.sign({"device": "hr", "bs": "b1"}), "update": {"device": "hr",
                                                                     "bs": "b2"}}
    attempts = [b'{"device": "hr", "bs": "b1"}\n',  # unsigned
                json.dumps(RelayAuth(b"o" * 32).sign({"device": "hr", "bs": "b1"})).encode()
                + b"\n",  # another key
                json.dumps(forged).encode() + b"\n",
                json.dumps(signed).encode() + b"\n",  # accepted once...
                json.dumps(signed).encode() + b"\n"]  # ...and refused as a replay
    replies: list[dict[str, Any]] = []

    def client() -> None:
        try:
            for line in attempts:
                with socket.create_connection(server.server_address, timeout=5) as sock:
                    sock.sendall(line)
                    replies.append(json.loads(sock.makefile("rb").readline()))
        finally:
            server.shutdown()

    threading.Thread(target=client, daemon=True).start()
    server.serve_forever()
    server.server_close()
    assert [r["ok"] for r in replies] == [False, False, False, True, False]
    assert "replayed" in replies[4]["error"] and "bad signature" in replies[2]["error"]
    assert [loc["bs_id"] for loc in store.locations()] == ["b1"]


# --- decomposition and composition: the pure parts ---------------------------------------


def handover(devices: list[str], to: str, uuid: str) -> dict:
    return {"data": {"devices": devices, "to": to, "to_uuid": uuid}}


def test_last_handover_to_a_living_vm_decides_who_serves_a_device() -> None:
    events = [handover(["g", "s"], "px-a-m", "u1"), handover(["s"], "px-a", "u0"),
              handover(["c"], "px-a-m", "u-old")]
    alive = {"px-a": "u0", "px-a-m": "u1"}
    assert assignments(events, alive) == {"g": "px-a-m", "s": "px-a"}
    # a destroyed mobile VM (or a new VM reusing its name) serves nothing it was given
    assert assignments(events, {"px-a": "u0", "px-a-m": "u2"}) == {"s": "px-a"}
    owners = {"g": "alice", "s": "alice", "c": "alice"}
    assert elsewhere(assignments(events, alive), owners, {"alice": "px-a"}) == {"g": "px-a-m"}
    # when the mobile part became the user's proxy, nothing is "elsewhere" any more
    assert elsewhere({"g": "px-a-m"}, owners, {"alice": "px-a-m"}) == {}


def test_directory_has_device_entries_only_for_devices_elsewhere() -> None:
    users = [{"name": "alice", "proxy_vm": "px-a"}]
    addresses = {"px-a": "10.1.0.2", "px-a-m": "10.1.0.3"}
    assert "devices" not in directory(users, addresses, {})
    out = directory(users, addresses, {"g": "px-a-m", "x": "px-unknown"})
    assert out["devices"] == {"g": {"proxy": "10.1.0.3", "port": 7071, "vm": "px-a-m"}}
    assert out["users"]["alice"]["proxy"] == "10.1.0.2"


def vm(name: str, node: str, uuid: str) -> VmRecord:
    return VmRecord(name=name, uuid=uuid, node=node, memory_mib=128, vcpus=1,
                    address=None, mac="52:54:00:00:00:01")


def test_engine_view_from_the_records_follows_handovers(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.sqlite")
    store.add_user("alice", "px-a")
    for dev, dtype in (("hr", "heart-rate"), ("g", "gps"), ("s", "speed")):
        store.add_device({"id": dev, "user": "alice", "type": dtype, "mobility": "mobile",
                          "role": "sensor"})
    store.add_vm(vm("px-a", "fog1", "u0"))
    [whole] = proxies_from_store(store, 128 << 20)["alice"]
    assert (whole.part, whole.devices) == ("whole", {"hr", "g", "s"})
    store.add_vm(vm("px-a-m", "fog2", "u1"))
    store.add_event(HANDOVER_EVENT, "alice", {"devices": ["g", "s"], "to": "px-a-m",
                                              "to_uuid": "u1"})
    static, mobile = proxies_from_store(store, 128 << 20)["alice"]
    assert (static.part, static.node, static.devices) == ("static", "fog1", {"hr"})
    assert (mobile.name, mobile.part, mobile.node, mobile.devices) == (
        "px-a-m", "mobile", "fog2", {"g", "s"})
    store.add_event(HANDOVER_EVENT, "alice", {"devices": ["g", "s"], "to": "px-a",
                                              "to_uuid": "u0"})
    [whole] = proxies_from_store(store, 128 << 20)["alice"]
    assert whole.devices == {"hr", "g", "s"} and whole.part == "whole"


def app(name: str, kind: str, types: list[str], models: list[tuple[str, str]],
        deployment: str = "local", vms: list[tuple[str, str]] = ()) -> dict:
    return {"name": name, "kind": kind, "types": types, "deployment": deployment,
            "models": [{"proxy_vm": p, "sink_vm": s} for p, s in models],
            "vms": [{"vm": v, "node": n} for v, n in vms]}


def test_mobile_part_gets_the_models_that_read_its_devices_types() -> None:
    apps = [app("traffic", "traffic", ["gps", "speed"], [("px-a", "app-traffic")]),
            app("park", "parknet", ["gps", "ultrasonic"], [("px-b", "app-park")]),
            app("find", "facefind", ["camera"], [("px-a", "ev-find-fog1")], "addon",
                [("ev-find-fog1", "fog1"), ("ev-find-fog2", "fog2")]),
            app("done", "traffic", ["gps", "speed"], [("px-a", "x"), ("px-a-m", "x")])]
    assert models_to_copy(apps, "px-a", "px-a-m", "fog2", {"speed"}) == [
        ("traffic", "app-traffic")]  # not parknet (other proxy), not faces (camera), not twice
    assert models_to_copy(apps, "px-a", "px-a-m", "fog2", {"camera", "gps"}) == [
        ("traffic", "app-traffic"), ("find", "ev-find-fog2")]  # an add-on sinks locally
    assert models_to_copy(apps, "px-a", "px-a-m", "fog3", {"camera"}) == [
        ("find", "ev-find-fog1")]
    assert models_to_copy(apps, "px-a", "px-a-m", "fog2", {"heart-rate"}) == []


def snap(dev: str, nxt: int) -> dict:
    return {"id": dev, "next": nxt, "accepted": nxt - 1, "chain": "ab" if nxt > 1 else ""}


def test_snapshot_bookkeeping() -> None:
    released = [snap("g", 5), snap("s", 3)]
    assert check_released(["s", "g"], released) == released
    for bad in ([snap("g", 5)], "nope", [snap("g", 5), snap("x", 1)], [1, 2]):
        with pytest.raises(OrchestratorError):
            check_released(["s", "g"], bad)
    # giving back after a failed adopt: per device, the state that is further along
    held = [snap("g", 1), snap("s", 9)]
    assert newest(released, held) == [snap("g", 5), snap("s", 9)]
    assert progress(released)["g"] == {"next": 5, "accepted": 4, "chain": "ab"}


class Resync:
    def __init__(self, view: list[Proxy]) -> None:
        self.view, self.asked = view, []

    def __call__(self, user: str) -> list[Proxy]:
        self.asked.append(user)
        return self.view


def test_failed_reassign_skips_the_compose_and_rereads_the_records(tmp_path: Path) -> None:
    cp, rec, store = plane(tmp_path, fail="reassign", owners={"hr": "alice", "gps": "alice"})
    cp.handle(LocationUpdate("hr", "b1", 1.0, ("gps",)))
    [dec] = cp.handle(LocationUpdate("gps", "b2", 2.0))
    assert dec["verdict"] == "decompose"
    truth = list(cp.controller.proxies["alice"])
    cp.resync = Resync(truth)
    out = cp.handle(LocationUpdate("gps", "b1", 3.0))
    assert [(a["verdict"], a["result"]["status"]) for a in out] == [
        ("reassign", "failed"), ("compose", "skipped")]
    assert [a.kind for a in rec.done][-1] == "reassign"  # the compose was never applied
    assert cp.controller.proxies["alice"] == truth and cp.resync.asked == ["alice"]
    logged = [e["data"]["result"]["status"] for e in store.events("decision")]
    assert logged[-2:] == ["failed", "skipped"]


def test_failed_decompose_rolls_the_engine_back(tmp_path: Path) -> None:
    cp, _rec, _store = plane(tmp_path, fail="decompose", owners={"hr": "alice", "gps": "alice"})
    cp.handle(LocationUpdate("hr", "b1", 1.0, ("gps",)))
    [out] = cp.handle(LocationUpdate("gps", "b2", 2.0))
    assert (out["verdict"], out["result"]["status"]) == ("decompose", "failed")
    [whole] = cp.controller.proxies["alice"]
    assert (whole.part, whole.node, whole.devices) == ("whole", "fog1", {"hr", "gps"})


def test_updates_through_the_controller_api_and_its_relay_are_recorded(tmp_path: Path) -> None:
    """`core locate` → controller API → LocationRelay (signs) → `locate --serve` → the plane
    with the real store: every hop a real loopback server, the decisions in the records."""
    from orchestrator.lab.controller.api import ControllerClient, LocationRelay, serve_api

    cp, _rec, store = plane(tmp_path)
    key = RelayAuth(b"z" * 32).key
    server = LocationServer(("127.0.0.1", 0), cp, RelayAuth(key))
    relay = LocationRelay(auth=RelayAuth(key))

    class Api:
        locations = relay.updates
        locate = staticmethod(relay.locate)
        set_locate_endpoint = staticmethod(relay.set_endpoint)

    api = serve_api(Api(), "127.0.0.1", 0)  # type: ignore[arg-type]
    replies: list[Any] = []

    def base_station() -> None:
        try:
            client = ControllerClient(f"http://127.0.0.1:{api.server_address[1]}", timeout_s=5)
            client.set_locate_endpoint(f"127.0.0.1:{server.server_address[1]}")
            replies.extend(client.locate({"device": "hr", "bs": bs, "at": at})
                           for bs, at in (("b1", 1), ("b2", 2)))
        finally:
            server.shutdown()

    threading.Thread(target=base_station, daemon=True).start()
    server.serve_forever()
    server.server_close()
    api.server_close()
    assert [r["actions"][0]["verdict"] for r in replies] == ["place", "migrate"]
    assert [e["data"]["verdict"] for e in store.events("decision")] == ["place", "migrate"]
    assert [loc["bs_id"] for loc in store.locations()] == ["b1", "b2"]


def test_base_stations_and_devices_added_after_start_are_known_to_the_plane(
        tmp_path: Path) -> None:
    """`locate --serve` runs for hours: a `bs add` / `device add` made since it started is
    registered from the records before an update naming it would be refused."""
    cp, _rec, store = plane(tmp_path)
    store.add_base_station("b9", "fog2")
    store.add_user("bob", None)
    store.add_device({"id": "cam", "user": "bob", "type": "camera", "mobility": "mobile",
                      "role": "sensor"})
    [placed] = cp.handle(LocationUpdate("cam", "b9", 1.0))
    assert placed["verdict"] == "place" and placed["destination"] == "fog2"
    cp.handle(LocationUpdate("hr", "b1", 2.0))  # what the MME knew before is kept
    with pytest.raises(UserError, match="unknown base station"):
        cp.handle(LocationUpdate("cam", "b10", 3.0))
