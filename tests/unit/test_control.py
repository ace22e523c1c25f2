"""Control-plane adapter without a lab: updates recorded, actions applied and logged,
failures rolled back in the engine, the line-JSON endpoint, listen-address checks."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from orchestrator.edge.control import (
    ControlPlane,
    LocationServer,
    check_listen_address,
    mme_from_store,
    parse_update,
)
from orchestrator.errors import OrchestratorError, UserError
from orchestrator.model.controller import (
    Action,
    ConstantDwell,
    Controller,
    ControlParams,
    TmigCache,
)
from orchestrator.model.mme import LocationUpdate, Mme
from orchestrator.store import Store


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.done: list[Action] = []
        self.fail = fail

    def apply(self, action: Action) -> dict[str, object]:
        self.done.append(action)
        if self.fail and action.kind == "migrate":
            raise OrchestratorError("boom")
        return {"status": "ok"}


def plane(tmp_path: Path, fail: bool = False) -> tuple[ControlPlane, Recorder, Store]:
    store = Store(tmp_path / "r.sqlite")
    mme = Mme.from_maps({"b1": "fog1", "b2": "fog2"}, {"hr": "alice"})
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
    cp, _rec, store = plane(tmp_path, fail=True)
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


def test_location_server_round_trip(tmp_path: Path) -> None:
    cp, _rec, _store = plane(tmp_path)
    cp.store = None  # the store's connection belongs to this thread
    server = LocationServer(("127.0.0.1", 0), cp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with socket.create_connection(server.server_address[:2], timeout=5) as sock:
            sock.sendall(b'{"device": "hr", "bs": "b1", "at": 1}\n{"device": "x", "bs": "b1"}\n'
                         b'{"device": "hr", "bs": "b2", "at": 2}\n')
            lines = sock.makefile("rb")
            replies = [json.loads(lines.readline()) for _ in range(3)]
    finally:
        server.shutdown()
        server.server_close()
    assert replies[0]["ok"] and replies[0]["actions"][0]["verdict"] == "place"
    assert not replies[1]["ok"] and "unknown device" in replies[1]["error"]
    assert replies[2]["actions"][0]["verdict"] == "migrate"
