"""Issue 13, orchestrator side of authentication: where keys are made, kept and sent.

* every VM gets a control key: on its kernel command line, in the records, never in a
  listing; the guest agent client signs with it (a verifying server on a real loopback
  socket, built from the wire module's own functions, checks the proofs);
* every device gets a credential at `device add`: recorded, registered with it on proxies
  (also when a handover registers it elsewhere), in the emulator's spec (mode 0600);
* a model installed on a proxy carries the sink key derived from the application VM's key.
"""

from __future__ import annotations

import json
import socket
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
import pytest

from agent.guest.edgeiot_agent import wire
from orchestrator.edge.apps import AppService
from orchestrator.edge.devices import DeviceRegistry, launch_emulator, with_keys
from orchestrator.edge.handover import HandoverService
from orchestrator.edge.proxies import ProxyService
from orchestrator.edge.scenario_devices import DeviceWorld, emulator_spec, plan_devices
from orchestrator.edge.users import UserRegistry
from orchestrator.edge.vms import VmService
from orchestrator.errors import ExitStatus, OrchestratorError
from orchestrator.fog.guest_agent import GuestAgent, GuestRefused
from orchestrator.images import guest_cmdline
from orchestrator.netguard import NetworkPolicy
from orchestrator.store import Store, VmRecord

KEY = "0123456789abcdef" * 4
OTHER = "fedcba9876543210" * 4


# --- the kernel command line ----------------------------------------------------------------


def test_the_key_goes_on_the_kernel_command_line_under_the_wire_name():
    line = guest_cmdline("px-a", "10.77.1.2", 16, key=KEY)
    assert f"{wire.KEY_CMDLINE}={KEY}" in line.split()
    assert wire.KEY_CMDLINE not in guest_cmdline("px-a", "10.77.1.2", 16)


@pytest.mark.parametrize("bad", ["", "abc", KEY.upper(), KEY[:-1] + " ", KEY[:-2] + " x"])
def test_a_malformed_key_cannot_reach_the_command_line(bad):
    with pytest.raises(ValueError, match="64 lowercase hex"):
        guest_cmdline("px-a", "10.77.1.2", 16, key=bad)


# --- a VM's key: defined domain, records, listings (libvirt's test driver) -----------------


@pytest.fixture
def test_inventory(tmp_path, isolated_state):
    keeper = libvirt.open("test:///default")  # the driver's state lives while one is open
    path = tmp_path / "hosts.ini"
    path.write_text("[fog_nodes]\nfogk libvirt_uri=test:///default domain_type=qemu "
                    "image_dir=/srv/img memory_mib=10240\n")
    yield str(path)
    for dom in keeper.listAllDomains():
        if dom.name().startswith("key-"):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    keeper.close()


def records(tmp_path: Path) -> Store:
    return Store(tmp_path / "state" / "records.sqlite")


def test_a_created_vm_boots_with_its_key_which_no_listing_shows(cli, test_inventory, tmp_path):
    created = cli("vm", "create", "key-vm", "--node", "fogk", "--memory", "128",
                  "--inventory", test_inventory, "--json")
    assert created.status == ExitStatus.SUCCESS, created.err
    store = records(tmp_path)
    try:
        key = store.vm_key("key-vm")
    finally:
        store.close()
    assert wire.is_key(key)
    conn = libvirt.open("test:///default")
    try:
        defined = conn.lookupByName("key-vm").XMLDesc(0)
    finally:
        conn.close()
    assert f"{wire.KEY_CMDLINE}={key}" in defined
    listed = cli("vm", "list", "--inventory", test_inventory, "--json")
    assert listed.status == ExitStatus.SUCCESS and "key-vm" in listed.out
    for out in (created.out, created.err, listed.out, listed.err):
        assert key not in out and wire.KEY_CMDLINE not in out
    assert cli("vm", "destroy", "key-vm", "--inventory", test_inventory).status == 0
    store = records(tmp_path)
    try:
        assert store.vm_key("key-vm") is None  # a name used again gets a fresh key
    finally:
        store.close()


def test_each_vm_gets_its_own_key(cli, test_inventory, tmp_path):
    for name in ("key-a", "key-b"):
        made = cli("vm", "create", name, "--node", "fogk", "--memory", "128",
                   "--inventory", test_inventory)
        assert made.status == ExitStatus.SUCCESS, made.err
    store = records(tmp_path)
    try:
        assert store.vm_key("key-a") != store.vm_key("key-b")
    finally:
        store.close()


def test_a_vm_with_an_address_gets_its_key_and_a_nic_bound_to_that_address(tmp_path):
    """VmService itself (no CLI): the key is on the defined domain's command line, and the
    NIC carries the anti-spoofing filter bound to the address it was given."""
    import ipaddress
    import xml.etree.ElementTree as ET

    from orchestrator.fleet import Fleet
    from orchestrator.fog.node import FogNode
    from orchestrator.fog.session import FleetSession

    keeper = libvirt.open("test:///default")
    store = Store(tmp_path / "records.sqlite")
    node = FogNode(name="fogk", uri="test:///default", address="fogk", image_dir="/srv/img",
                   domain_type="qemu", facts={"memory_mib": 10240})
    fleet = Fleet(nodes={"fogk": node}, policy=NetworkPolicy(),
                  vm_network=ipaddress.IPv4Network("10.99.0.0/24"), prefix_len=24,
                  gateway=None)
    try:
        with FleetSession(fleet) as session:
            record = VmService(session, store).create("key-net", "fogk", 128, wait_s=0)
        root = ET.fromstring(keeper.lookupByName("key-net").XMLDesc(0))
        cmdline = root.findtext("./os/cmdline") or ""
        assert f"{wire.KEY_CMDLINE}={store.vm_key('key-net')}" in cmdline.split()
        ref = root.find("./devices/interface/filterref")
        assert ref is not None and ref.get("filter") == "clean-traffic"
        assert [(p.get("name"), p.get("value")) for p in ref] == [("IP", record.address)]
    finally:
        store.close()
        for dom in keeper.listAllDomains():
            if dom.name() == "key-net":
                dom.destroy()
                dom.undefine()
        keeper.close()


def vm_record(name: str, address: str | None = "127.0.0.1", role: str = "proxy") -> VmRecord:
    return VmRecord(name, f"uuid-{name}", "fog1", 128, 1, address, "52:54:00:00:00:01", role)


def test_a_vm_recorded_before_keys_gets_a_one_line_error(tmp_path):
    store = Store(tmp_path / "records.sqlite")
    try:
        store.add_vm(vm_record("old"))
        with pytest.raises(OrchestratorError) as err:
            VmService(None, store).agent("old")  # type: ignore[arg-type]
        assert "no control key" in str(err.value) and "\n" not in str(err.value)
    finally:
        store.close()


def test_the_cli_says_so_in_one_line_for_a_vm_without_a_key(cli, test_inventory, tmp_path):
    store = records(tmp_path)
    try:
        store.add_vm(vm_record("px-old", address="10.77.1.9"))
        UserRegistry(store).add("alice")
        store.set_user_proxy("alice", "px-old")
    finally:
        store.close()
    result = cli("user", "stats", "alice", "--inventory", test_inventory)
    assert result.status == ExitStatus.ERROR
    (line,) = result.err.strip().splitlines()
    assert line.startswith("orchestrator: error: ") and "'px-old' has no control key" in line


# --- GuestAgent against a verifying server on a real loopback socket -----------------------


@dataclass
class VerifyingGuest:
    """A control port that checks proofs exactly as the wire contract says."""

    key: str
    sock: socket.socket = field(default_factory=socket.socket)
    lines: list[dict[str, Any]] = field(default_factory=list)  # every request received

    def __post_init__(self) -> None:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        nonce, last_n = None, 0
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                request = json.loads(line)
                self.lines.append(request)
                reply, nonce, last_n = self._answer(request, nonce, last_n)
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def _answer(self, request: dict[str, Any], nonce: str | None,
                last_n: int) -> tuple[dict[str, Any], str | None, int]:
        if request.get("op") == wire.OP_CHALLENGE:
            nonce = wire.new_nonce()
            return {"ok": True, "nonce": nonce}, nonce, 0
        if request.get("op") in wire.OPEN_OPS:
            return {"ok": True, "pong": True}, nonce, last_n
        if nonce is None:
            return {"ok": False, "error": "unauthenticated: send 'challenge' first"}, None, 0
        try:
            last_n = wire.verify_request(self.key, nonce, last_n, request)
        except wire.AuthError as exc:
            return {"ok": False, "error": str(exc)}, nonce, last_n
        return {"ok": True, "echo": request["op"]}, nonce, last_n

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def guest() -> Iterator[VerifyingGuest]:
    server = VerifyingGuest(KEY)
    yield server
    server.close()


def client(guest: VerifyingGuest, key: str | None) -> GuestAgent:
    return GuestAgent("127.0.0.1", NetworkPolicy(), port=guest.port, timeout_s=2.0, key=key)


def test_the_right_key_is_accepted_and_every_request_is_signed(guest):
    agent = client(guest, KEY)
    assert agent.request("status")["echo"] == "status"
    assert agent.request("device_register", devices=[], held=True)["echo"] == "device_register"
    signed = [r for r in guest.lines if r["op"] not in wire.OPEN_OPS]
    assert [r["auth"]["n"] for r in signed] == [1, 1]  # one fresh connection per request
    assert agent.request("ping")["pong"] and "auth" not in guest.lines[-1]
    assert KEY not in repr(agent) and KEY not in json.dumps(guest.lines)


def test_a_wrong_key_is_refused_with_one_line(guest):
    with pytest.raises(GuestRefused) as err:
        client(guest, OTHER).request("status")
    message = str(err.value)
    assert "bad request signature" in message and "\n" not in message


def test_an_unsigned_request_is_refused(guest):
    with pytest.raises(OrchestratorError, match="unauthenticated"):
        client(guest, None).request("status")


def test_a_refusal_ends_wait_ready_at_once(guest):
    with pytest.raises(GuestRefused):
        client(guest, OTHER).wait_ready(timeout_s=30.0)  # would take 30 s if it retried
    assert client(guest, KEY).wait_ready(timeout_s=2.0)["echo"] == "status"


def test_a_captured_request_cannot_be_replayed(guest):
    client(guest, KEY).request("dirty", pages_per_s=10, working_set_mib=1)
    captured = guest.lines[-1]
    assert captured["auth"]["n"] == 1
    with socket.create_connection(("127.0.0.1", guest.port), timeout=2) as sock:
        lines = sock.makefile("rb")

        def send(obj: dict[str, Any]) -> dict[str, Any]:
            sock.sendall(json.dumps(obj).encode() + b"\n")
            return dict(json.loads(lines.readline()))

        assert send({"op": wire.OP_CHALLENGE})["ok"]
        refused = send(captured)  # another connection, another nonce
        assert not refused["ok"] and "signature" in refused["error"]
    with socket.create_connection(("127.0.0.1", guest.port), timeout=2) as sock:
        lines = sock.makefile("rb")
        nonce = send({"op": wire.OP_CHALLENGE})["nonce"]
        fresh = wire.sign_request(KEY, nonce, 1, {"op": "status"})
        assert send(fresh)["ok"]
        again = send(fresh)  # the same connection, a counter already used
        assert not again["ok"] and "stale" in again["error"]


def test_a_guest_without_challenge_gets_a_clear_error():
    """An agent that predates authentication refuses `challenge`: say so in one line."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def old_agent() -> None:
        conn, _ = server.accept()
        with conn:
            conn.makefile("rb").readline()
            conn.sendall(b'{"ok": false, "error": "unknown op \'challenge\'"}\n')

    threading.Thread(target=old_agent, daemon=True).start()
    try:
        agent = GuestAgent("127.0.0.1", NetworkPolicy(), port=server.getsockname()[1],
                           timeout_s=2.0, key=KEY)
        with pytest.raises(GuestRefused, match="challenge refused: unknown op"):
            agent.request("status")
    finally:
        server.close()


# --- devices: credentials at add, in registrations, in emulator specs ----------------------


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEIOT_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("EDGEIOT_LAB", "nolab")
    return tmp_path


def test_device_add_records_a_key_that_no_listing_shows(state, cli):
    assert cli("user", "add", "alice").status == ExitStatus.SUCCESS
    added = cli("device", "add", "fd00::1", "--user", "alice", "--type", "gps", "--json")
    assert added.status == ExitStatus.SUCCESS, added.err
    store = Store(state / "records.sqlite")
    try:
        key = store.device_keys(["fd00::1"])["fd00::1"]
    finally:
        store.close()
    assert wire.is_key(key)
    listed = cli("device", "list", "--json")
    assert [d["id"] for d in listed.json()] == ["fd00::1"]
    for out in (added.out, listed.out, cli("device", "list").out):
        assert key not in out and '"key"' not in out


class Recorder:
    """A guest agent stand-in that records requests and answers like a proxy would."""

    def __init__(self, name: str, log: list[tuple[str, str, dict[str, Any]]]) -> None:
        self.name, self.log = name, log

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        self.log.append((self.name, op, args))
        if op == "device_release":
            return {"ok": True, "released": [{"id": d, "next": 5, "accepted": 4, "chain": "c"}
                                             for d in args["devices"]]}
        return {"ok": True}


@pytest.fixture
def fleetless(tmp_path, monkeypatch):
    """A store with alice, her proxy px-alice and two devices; agents are recorders."""
    store = Store(tmp_path / "records.sqlite")
    UserRegistry(store).add("alice")
    store.set_user_proxy("alice", "px-alice")
    store.add_vm(vm_record("px-alice"), wire.new_key())
    store.add_vm(vm_record("px-alice-m"), wire.new_key())
    registry = DeviceRegistry(store)
    registry.add("fd00::1", "alice", "gps", group="car")
    registry.add("fd00::2", "alice", "speed", group="car")
    log: list[tuple[str, str, dict[str, Any]]] = []
    monkeypatch.setattr(ProxyService, "agent", lambda _self, vm: Recorder(vm, log))
    yield store, log
    store.close()


def test_registration_on_the_proxy_carries_each_devices_key(fleetless, tmp_path):
    store, log = fleetless
    ProxyService(None, store, tmp_path).push_devices("px-alice")  # type: ignore[arg-type]
    keys = store.device_keys(["fd00::1", "fd00::2"])
    ((vm, op, args),) = log
    assert (vm, op) == ("px-alice", "device_register")
    assert {d["id"]: d["key"] for d in args["devices"]} == keys
    assert set(keys) == {"fd00::1", "fd00::2"} and len(set(keys.values())) == 2


def test_a_handover_registers_the_devices_with_their_keys_on_the_target(fleetless, tmp_path):
    store, log = fleetless
    HandoverService(None, store, tmp_path).move(  # type: ignore[arg-type]
        "alice", ["fd00::1"], "px-alice", "px-alice-m")
    register = [(vm, a) for vm, op, a in log if op == "device_register"]
    assert register == [("px-alice-m", {"held": True, "devices": [
        {"id": "fd00::1", "type": "gps", "user": "alice", "role": "sensor", "group": "car",
         "key": store.device_keys(["fd00::1"])["fd00::1"]}]})]


def test_a_device_recorded_before_credentials_gets_one_when_registered(tmp_path):
    store = Store(tmp_path / "records.sqlite")
    try:
        UserRegistry(store).add("alice")
        store.add_device({"id": "fd00::9", "user": "alice", "type": "gps",
                          "mobility": "mobile", "role": "sensor"})  # no key: an old record
        assert store.device_keys(["fd00::9"]) == {}
        (entry,) = DeviceRegistry(store).registrations(store.devices("alice"))
        assert wire.is_key(entry["key"]) and store.device_keys(["fd00::9"]) == {
            "fd00::9": entry["key"]}
    finally:
        store.close()


def test_the_emulator_spec_carries_the_keys_and_is_private(fleetless, tmp_path):
    store, _log = fleetless
    spec = with_keys({"user": "alice", "sources": [
        {"kind": "drive", "gps": "fd00::1", "speed": "fd00::2", "route": []}]}, store)
    assert spec["keys"] == store.device_keys(["fd00::1", "fd00::2"])
    path = tmp_path / "spec.json"
    path.write_text("{}")
    path.chmod(0o644)  # an earlier spec, readable by all: tightened before the rewrite
    proc = launch_emulator(["true"], spec, path, tmp_path / "emulator.log")
    proc.wait()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["keys"] == spec["keys"]


def test_the_replays_devices_are_registered_with_keys_that_reach_their_spec(tmp_path):
    store = Store(tmp_path / "records.sqlite")
    try:
        plan = plan_devices(["u0"])
        world = DeviceWorld(None, store, tmp_path, plan, str, list, "10.9.0.0/16",  # type: ignore[arg-type]
                            "br-vm", 1.0, tmp_path)
        world.register()
        spec = with_keys(emulator_spec(plan["u0"], 1.0, tmp_path / "d.json", "10.9.0.0/16",
                                       "br-vm", tmp_path / "r.json", tmp_path / "a.json"), store)
        assert set(spec["keys"]) == set(plan["u0"].all)
        assert spec["keys"] == store.device_keys(plan["u0"].all)
    finally:
        store.close()


# --- models: the sink key that authorises a proxy on the application VM --------------------


def test_a_model_installed_on_a_proxy_carries_the_derived_sink_key(fleetless, tmp_path):
    store, log = fleetless
    app_key = wire.new_key()
    store.add_vm(vm_record("app-park", "127.0.0.2", role="app"), app_key)
    store.add_application("park", "parknet", "local", ["gps", "ultrasonic"], {})
    AppService(None, store, tmp_path)._install_model(  # type: ignore[arg-type]
        "park", "parknet", ["gps", "ultrasonic"], {}, "px-alice", "app-park")
    ((vm, op, args),) = log
    assert (vm, op) == ("px-alice", "model_install")
    assert args["sink"] == {"host": "127.0.0.2", "port": wire.METADATA_PORT,
                            "key": wire.sink_key(app_key, "park", "px-alice")}
    assert args["sink"]["key"] != wire.sink_key(app_key, "park", "px-alice-m")
    assert app_key not in json.dumps(args)
    assert store.application("park")["models"] == [{"proxy_vm": "px-alice",
                                                     "sink_vm": "app-park"}]


def test_the_records_that_hold_keys_are_the_owners_only(tmp_path):
    path = tmp_path / "records.sqlite"
    path.write_bytes(b"")
    path.chmod(0o644)  # records made before keys: tightened when opened
    store = Store(path)
    try:
        store.add_vm(vm_record("px-a"), KEY)  # writes the WAL too
        assert store.vm_key("px-a") == KEY
        for made in [path, *tmp_path.glob("records.sqlite-*")]:
            assert stat.S_IMODE(made.stat().st_mode) == 0o600, made
    finally:
        store.close()


def test_a_domain_spec_never_shows_its_key_in_a_repr():
    from orchestrator.fog.domain_xml import DomainSpec, to_xml

    spec = DomainSpec(name="px-a", uuid="u", memory_mib=128, vcpus=1, domain_type="qemu",
                      kernel="k", initrd="i", cmdline=guest_cmdline("px-a", None, None, key=KEY))
    assert KEY not in repr(spec) and KEY not in str(spec)
    assert f"{wire.KEY_CMDLINE}={KEY}" in to_xml(spec)
