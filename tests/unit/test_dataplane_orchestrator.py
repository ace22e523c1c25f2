"""Issue 3, orchestrator side without a lab: device IDs, placement with cloud offload, the
target image, the directory, the v1→v2 store upgrade, models for a proxy created after its
applications, and CLI bad input in-process."""

from __future__ import annotations

import math
import sqlite3
from types import SimpleNamespace

import pytest

from agent.devices import world
from orchestrator.cli import main
from orchestrator.edge import apps as apps_module
from orchestrator.edge.apps import (
    AppService,
    choose_node,
    models_for_new_proxy,
    parse_pgm,
    validate_grants,
)
from orchestrator.edge.devices import validate_device_id
from orchestrator.edge.proxies import directory
from orchestrator.errors import ExitStatus, OrchestratorError, UserError
from orchestrator.store import SCHEMA_VERSION, Store


def test_device_ids():
    assert validate_device_id("urn:epc:id:sgtin:0614141.107346.2017") .startswith("urn:epc")
    assert validate_device_id("3074257bf7194e4000001a85") == "3074257BF7194E4000001A85"
    assert validate_device_id("FD00:0:0::1") == "fd00::1"
    for bad in ("", "abc", "urn:epc:id:bogus:1", "10.0.0.1", "12345"):
        with pytest.raises(UserError, match="invalid device ID"):
            validate_device_id(bad)


def test_placement_offloads_to_the_cloud_only_when_the_fog_node_is_full():
    caps = {"fog1": 256.0, "cloud": math.inf}
    assert choose_node("fog1", 128, {"fog1": 128}, caps, "cloud") == ("fog1", False)
    assert choose_node("fog1", 128, {"fog1": 256}, caps, "cloud") == ("cloud", True)
    with pytest.raises(OrchestratorError, match="no cloud node"):
        choose_node("fog1", 128, {"fog1": 256}, caps, None)


def test_placement_offloads_when_the_node_reports_too_little_free_memory(monkeypatch, tmp_path):
    nodes = {"fog1": SimpleNamespace(facts={}), "cloud": SimpleNamespace(facts={"kind": "cloud"})}
    fleet = SimpleNamespace(nodes=nodes, node=lambda name: nodes[name])
    store = Store(tmp_path / "records.sqlite")
    service = AppService(SimpleNamespace(fleet=fleet), store, tmp_path)  # type: ignore[arg-type]
    free = {"fog1": 1024 * 2**20}
    monkeypatch.setattr(apps_module, "free_vm_memory_bytes", lambda _s, node: free[node])
    try:
        assert service.place("fog1") == ("fog1", False)
        free["fog1"] = 100 * 2**20  # under the default 1024 MiB, but not free on the node
        assert service.place("fog1") == ("cloud", True)
    finally:
        store.close()


APPS = [
    {"name": "tr", "deployment": "remote", "models": [{"proxy_vm": "px-a", "sink_vm": "app-tr"}],
     "vms": [{"vm": "app-tr", "node": "cloud", "offloaded": 0}]},
    {"name": "park", "deployment": "local", "models": [],
     "vms": [{"vm": "app-park", "node": "fog1", "offloaded": 0}]},
    {"name": "far", "deployment": "local", "models": [],
     "vms": [{"vm": "app-far", "node": "cloud", "offloaded": 1}]},
    {"name": "ev", "deployment": "addon", "models": [],
     "vms": [{"vm": "ev-ev-fog1", "node": "fog1", "offloaded": 0},
             {"vm": "ev-ev-fog2", "node": "fog2", "offloaded": 0}]},
]


def test_a_new_proxy_gets_the_models_of_the_applications_that_serve_it():
    assert models_for_new_proxy(APPS, "px-b", "fog2") == [("tr", "app-tr"), ("ev", "ev-ev-fog2")]
    assert models_for_new_proxy(APPS, "px-b", "fog1") == [
        ("tr", "app-tr"), ("park", "app-park"), ("ev", "ev-ev-fog1")]
    assert models_for_new_proxy(APPS, "px-a", "fog3") == []  # has tr's already


def test_serve_new_proxy_installs_with_each_applications_grants(monkeypatch, tmp_path):
    store = Store(tmp_path / "records.sqlite")
    try:
        store.add_application("tr", "traffic", "remote", ["gps", "speed"], {"window": 5})
        store.add_app_vm("tr", "app-tr", "cloud", False)
        store.add_application("park", "parknet", "local", ["gps", "ultrasonic"], {})
        store.add_app_vm("park", "app-park", "fog1", False)
        calls = []
        service = AppService(None, store, tmp_path)  # type: ignore[arg-type]
        monkeypatch.setattr(service, "_install_model", lambda *a: calls.append(a))
        assert service.serve_new_proxy("px-b", "fog2") == ["tr"]
        assert calls == [("tr", "traffic", ["gps", "speed"], {"window": 5}, "px-b", "app-tr")]
    finally:
        store.close()


def test_target_image_and_grants():
    px = world.face_image(1, 0)
    assert parse_pgm(world.to_pgm(px)) == (32, 32, px)
    for bad in (b"P6\n1 1\n255\nx", b"P5\n32 32\n255\n" + bytes(10), b"junk"):
        with pytest.raises(UserError):
            parse_pgm(bad)
    assert validate_grants("parknet", None) == ["gps", "ultrasonic"]
    with pytest.raises(UserError, match="permission denied"):
        validate_grants("traffic", ["gps"])
    with pytest.raises(UserError, match="unknown data type"):
        validate_grants("traffic", ["gps", "speed", "smell"])
    with pytest.raises(UserError, match="unknown application kind"):
        validate_grants("chess", None)


def test_directory_lists_users_with_a_known_proxy_address():
    users = [{"name": "a", "proxy_vm": "px-a"}, {"name": "b", "proxy_vm": "px-a"},
             {"name": "c", "proxy_vm": None}]
    out = directory(users, {"px-a": "10.77.1.1"})
    assert out == {"users": {n: {"proxy": "10.77.1.1", "port": 7071, "vm": "px-a"}
                             for n in ("a", "b")}}


def test_v1_records_upgrade_cleanly(tmp_path):
    path = tmp_path / "records.sqlite"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE vms (name TEXT PRIMARY KEY, uuid TEXT NOT NULL, node TEXT "
                     "NOT NULL, memory_mib INTEGER NOT NULL, vcpus INTEGER NOT NULL, address "
                     "TEXT, mac TEXT NOT NULL, role TEXT NOT NULL DEFAULT 'proxy', created_at "
                     "REAL NOT NULL); INSERT INTO vms VALUES ('v','u','fog1',128,1,NULL,'m',"
                     "'proxy',1.0); PRAGMA user_version=1;")
    db.close()
    store = Store(path)
    try:
        assert SCHEMA_VERSION >= 2  # v2 added users, devices and applications
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.vm("v").node == "fog1"
        store.add_user("alice", None)
        store.add_application("park", "parknet", "local", ["gps"], {})
        store.add_app_vm("park", "app-park", "fog1", False)
        assert store.application("park")["vms"] == [{"vm": "app-park", "node": "fog1",
                                                     "offloaded": 0}]
        store.remove_application("park")
        assert store.applications() == []
    finally:
        store.close()


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEIOT_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("EDGEIOT_LAB", "nolab")
    return tmp_path


def test_cli_users_and_devices_without_a_lab(state, cli):
    assert cli("user", "add", "alice").status == ExitStatus.SUCCESS
    ok = cli("device", "add", "fd00::1", "--user", "alice", "--type", "gps", "--group",
             "car-1", "--json")
    assert ok.status == ExitStatus.SUCCESS and ok.json()["grp"] == "car-1"
    cases = [
        (["user", "add", "alice"], "already exists"),
        (["user", "add", "Bad_Name"], "invalid user name"),
        (["user", "add", "bob", "--share-with", "nobody"], "unknown user"),
        (["device", "add", "fd00::2", "--user", "nobody", "--type", "gps"], "unknown user"),
        (["device", "add", "fd00::2", "--user", "alice", "--type", "smell"],
         "unknown data type"),
        (["device", "add", "FD00::1", "--user", "alice", "--type", "gps"],
         "already registered"),
        (["device", "add", "x", "--user", "alice", "--type", "gps"], "invalid device ID"),
        (["device", "add", "fd00::2", "--user", "alice", "--type", "gps", "--role", "boss"],
         "--role"),
        (["app", "install", "p", "--kind", "parknet", "--types", "gps,ultrasonic,smell"],
         "unknown data type"),
        (["app", "install", "p", "--kind", "parknet", "--types", "gps"], "permission denied"),
        (["app", "install", "p", "--kind", "chess"], "unknown application kind"),
        (["app", "install", "p", "--kind", "parknet", "--deploy", "moon"], "--deploy"),
        (["app", "remove", "nothing"], "unknown application"),
        (["app", "query", "nothing", "spots"], "unknown application"),
        (["app", "event", "e", "--area", "fog1"], "--target-image"),
    ]
    for args, message in cases:
        result = cli(*args)
        assert result.status == ExitStatus.BAD_INPUT, (args, result.err)
        assert message in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert [d["id"] for d in cli("device", "list", "--json").json()] == ["fd00::1"]
    assert [u["name"] for u in cli("user", "list", "--json").json()] == ["alice"]
    for args, message in [
        (["device", "actuate", "fd00::9", '{"on": 1}'], "unknown device"),
        (["device", "actuate", "fd00::1", '{"on": 1}'], "not an actuator"),
        (["device", "actuate", "fd00::1", "on"], "JSON object"),
        (["device", "actuate", "nope", "{}"], "invalid device ID"),
    ]:
        result = cli(*args)
        assert result.status == ExitStatus.BAD_INPUT, (args, result.err)
        assert message in result.err and len(result.err.strip().splitlines()) == 1, result.err


def test_users_who_trust_each_other_share_a_proxy(state, cli):
    assert cli("user", "add", "alice").status == ExitStatus.SUCCESS
    shared = cli("user", "add", "bob", "--share-with", "alice", "--json")
    assert shared.status == ExitStatus.SUCCESS and shared.json()["proxy_vm"] == "px-alice"
    assert {u["name"]: u["proxy_vm"] for u in cli("user", "list", "--json").json()} == {
        "alice": None, "bob": "px-alice"}
    assert main(["app", "list", "--json"]) == ExitStatus.SUCCESS


# --- proxy VMs offloaded like application VMs (libvirt's test driver) ---------------------

CLOUD_XML = """<node><cpu><mhz>2000</mhz><model>x86</model><active>2</active><total>2</total>
<nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads></cpu>
<memory>4194304</memory></node>"""


@pytest.fixture
def test_driver_fleet(tmp_path):
    """fog1 on test:///default, whose own "test" domain holds 8 GiB, so 256 MiB of the
    declared 8448 are free (two 128 MiB proxies); `cloud` on a private test driver."""

    import libvirt

    from orchestrator.fleet import Fleet
    from orchestrator.fog.node import FogNode
    from orchestrator.fog.session import FleetSession
    from orchestrator.netguard import NetworkPolicy

    keeper = libvirt.open("test:///default")  # the driver's state lives while one is open
    (tmp_path / "cloud.xml").write_text(CLOUD_XML)

    def fleet(with_cloud: bool) -> FleetSession:
        nodes = {"fog1": FogNode(name="fog1", uri="test:///default", address="fog1",
                                 image_dir="/srv/img", domain_type="qemu",
                                 facts={"kind": "fog", "memory_mib": 8192 + 256})}
        if with_cloud:
            nodes["cloud"] = FogNode(name="cloud", uri=f"test://{tmp_path}/cloud.xml",
                                     address="cloud", image_dir="/srv/img", domain_type="qemu",
                                     facts={"kind": "cloud", "memory_mib": 4096})
        return FleetSession(Fleet(nodes=nodes, policy=NetworkPolicy(), vm_network=None,
                                  prefix_len=None, gateway=None))
    yield fleet
    for dom in keeper.listAllDomains():
        if dom.name().startswith("px-"):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    keeper.close()


def test_a_proxy_vm_goes_to_the_cloud_when_its_fog_node_is_full(test_driver_fleet, tmp_path):
    from orchestrator.edge.proxies import ProxyService
    from orchestrator.edge.users import UserRegistry

    store = Store(tmp_path / "records.sqlite")
    try:
        with test_driver_fleet(with_cloud=True) as session:
            proxies = ProxyService(session, store, tmp_path)
            for user in ("a", "b", "c"):
                UserRegistry(store).add(user)
            placed = [proxies.ensure_placed(u, "fog1") for u in ("a", "b", "c")]
            assert [(p.vm, p.node, p.offloaded) for p in placed] == [
                ("px-a", "fog1", False), ("px-b", "fog1", False), ("px-c", "cloud", True)]
            assert placed[2].message() == ("proxy VM px-c on cloud (offloaded to the cloud: "
                                           "fog node fog1 lacks capacity)")
            assert placed[0].message() == "proxy VM px-a on fog1"
            assert store.vm("px-c").node == "cloud" and store.user("c")["proxy_vm"] == "px-c"
            assert [g.node for g in session.locate("px-c")] == ["cloud"]
            events = store.events("offload")
            assert [(e["subject"], e["data"]) for e in events] == [
                ("px-c", {"user": "c", "role": "proxy", "wanted": "fog1", "node": "cloud"})]
            again = proxies.ensure_placed("c", "fog1")  # exists: stays where it is, no event
            assert (again.node, again.offloaded, again.created) == ("cloud", False, False)
            assert len(store.events("offload")) == 1
            assert proxies.running_proxies() == {"px-a": "fog1", "px-b": "fog1",
                                                 "px-c": "cloud"}
    finally:
        store.close()


def test_a_full_fog_node_without_a_cloud_still_refuses_a_proxy_vm(test_driver_fleet, tmp_path):
    from orchestrator.edge.proxies import ProxyService
    from orchestrator.edge.users import UserRegistry

    store = Store(tmp_path / "records.sqlite")
    try:
        with test_driver_fleet(with_cloud=False) as session:
            proxies = ProxyService(session, store, tmp_path)
            for user in ("a", "b", "c"):
                UserRegistry(store).add(user)
            assert proxies.ensure("a", "fog1") == "px-a" and proxies.ensure("b", "fog1")
            with pytest.raises(UserError, match="not enough free memory for px-c"):
                proxies.ensure("c", "fog1")
            assert store.vm("px-c") is None and store.events("offload") == []
    finally:
        store.close()
