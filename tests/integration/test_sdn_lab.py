"""Issue 9 on a real 3-node lab whose core is Open vSwitch + the lab's OpenFlow controller.

One lab for the module (migration class metered at 80 Mbit/s), one 128 MiB VM and one 128 MiB
proxy VM. Senders in the fog nodes' namespaces count what they send; the controller's per-class
counters must account for it. An uncapped TCP flow on a migration port is held to the meter's
rate (the same flow on another port runs far faster). The VM migrates through the metered core
with the cap `migrate` derives from the meter (its rate sampled from the counters), again while
a camera streams into the proxy VM on another node (the raw and migration classes account for
what the emulator sent and what the migration record says), is reachable at its address
afterwards, and migrates with a controller flow move. The last test tears the lab down and
checks that OVS and the controller are gone with their files.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time

import psutil
import pytest

from orchestrator.edge.devices import launch_emulator, with_keys
from orchestrator.edge.proxies import directory_path
from orchestrator.errors import ExitStatus
from orchestrator.lab.builder import Lab
from orchestrator.lab.controller.moves import GapProbe
from orchestrator.lab.controller.rules import CLASS_NAMES, CLASSES, meter_band
from orchestrator.lab.sdn import DAEMONS, controller_client, ovs_files
from orchestrator.lab.topology import DEVICE_LINK
from orchestrator.store import open_store
from tests.integration.conftest import lab_fixture

pytestmark = pytest.mark.lab

# NOTE: not 10.67.0.0/16 (test_decompose_lab uses it)
PREFIX, SUBNET, RATE_MBIT = "esdn", "10.68.0.0/16", 80
CAP_MIB_S = 8  # the cap `migrate` derives from the meter (r_mig): 80 Mbit/s = 9.5 MiB/s,
# frames ~7 % above the payload
MIGRATION_PORT = CLASSES["migration"][0].high  # QEMU takes the range from the bottom
OTHER_PORT = 7099  # in no class ("other"): not metered
HEADERS = 66  # Ethernet 14 + IPv4 20 + TCP 20 + timestamps 12, per frame
CAMERA = "urn:epc:id:giai:0614141.c.1"
lab = lab_fixture(PREFIX, SUBNET, 3, "--core", "sdn", "--migration-mbit", str(RATE_MBIT))
VM, VM_ADDRESS, VM_MAC = "sdnvm", "10.68.1.1", "52:54:00:44:01:01"
UDP_SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n, size = int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    s.sendto(b"d" * size, (sys.argv[1], 7071))
    if i % 50 == 0:
        time.sleep(0.005)
"""
TCP_SINK = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7072)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); n = 0
while (d := c.recv(1 << 20)): n += len(d)
print(n, flush=True)
"""
TCP_SENDER = """
import socket, sys
c = socket.create_connection((sys.argv[1], 7072)); total = int(sys.argv[2]); sent = 0
while sent < total: c.sendall(b"m" * 65536); sent += 65536
c.shutdown(socket.SHUT_WR); c.recv(1); print(sent)
"""
RATE_SINK = """
import json, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); s.settimeout(30); print("ready", flush=True)
c, _ = s.accept(); c.settimeout(30); t0 = time.monotonic(); n = 0; out = [(0.0, 0)]; due = 0.2
while (d := c.recv(1 << 20)):
    n += len(d); t = time.monotonic() - t0
    if t >= due: out.append((t, n)); due = t + 0.2
out.append((time.monotonic() - t0, n)); print(json.dumps(out), flush=True)
"""
BULK_SENDER = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
total, end, sent = int(sys.argv[3]), time.monotonic() + float(sys.argv[4]), 0
while sent < total and time.monotonic() < end: c.sendall(b"b" * 65536); sent += 65536
c.shutdown(socket.SHUT_WR); c.recv(1); print(sent)
"""


def in_node(node: str, code: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", f"{PREFIX}-{node}", sys.executable, "-c", code, *args]


def client(lab_handle):
    c = controller_client(ovs_files(lab_handle.state_dir / "labs" / PREFIX, PREFIX))
    assert c is not None
    return c


def classes(lab_handle, settle_s: float = 0.0) -> dict:
    """Per-class counters; OVS pushes datapath flow stats to its OpenFlow counters every
    ~0.5 s (revalidator), so let them settle after traffic stops."""
    time.sleep(settle_s)
    return client(lab_handle).stats()["classes"]


def test_sdn_core_is_up_and_routes_the_lab(lab, cli):
    status = cli("lab", "status", "--json").json()
    assert status["spec"]["core"] == "sdn"
    assert status["core_stats"]["connected"] is True
    assert set(status["core_stats"]["links"]) == {"fog1", "fog2", "fog3"}
    route = subprocess.run(["ip", "-j", "route", "get", "10.68.0.12"], capture_output=True,
                           text=True).stdout
    assert f'"dev":"{PREFIX}-core"' in route  # the gateway sits on the OVS internal port
    assert classes(lab)["control"]["bytes"] > 0  # lab up itself spoke libvirt over the core
    per_class = Lab.recorded(lab.state_dir, PREFIX).core_classes()  # what the replay reads
    assert per_class is not None and set(per_class) == set(CLASS_NAMES)


def test_udp_device_stream_is_counted_exactly(lab):
    n, size = 2000, 1000
    before = classes(lab)["raw"]
    subprocess.run(in_node("fog1", UDP_SENDER, "10.68.0.12", str(n), str(size)), check=True)
    after = classes(lab, settle_s=1.5)["raw"]
    packets, sent = after["packets"] - before["packets"], after["bytes"] - before["bytes"]
    assert packets >= 0.97 * n and packets <= n
    assert sent == packets * (size + 42)  # Ethernet 14 + IPv4 20 + UDP 8 per datagram


def test_tcp_metadata_stream_is_counted_within_a_few_percent(lab):
    total = 32 * 2**20
    sink = subprocess.Popen(in_node("fog3", TCP_SINK, "10.68.0.13"), stdout=subprocess.PIPE,
                            text=True)
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        before = classes(lab)["metadata"]
        sender = subprocess.run(in_node("fog1", TCP_SENDER, "10.68.0.13", str(total)),
                                capture_output=True, text=True, timeout=60, check=True)
        sent = int(sender.stdout)
        assert int(sink.communicate(timeout=10)[0]) == sent
    finally:
        if sink.poll() is None:
            sink.kill()
    after = classes(lab, settle_s=1.5)["metadata"]
    counted = after["bytes"] - before["bytes"]
    # Frames carry the payload plus 66-ish bytes of headers per ~1448-byte segment, and
    # the ACKs coming back: at least the payload, at most 8 % more.
    assert sent <= counted <= 1.08 * sent


def bulk_flow(port: int, total: int, seconds: float) -> tuple[int, list[tuple[float, int]]]:
    """An uncapped TCP flow fog1 -> fog3 to `port`, at most `total` bytes or `seconds`: what
    the sender sent and the receiver's (seconds, bytes received) samples."""
    sink = subprocess.Popen(in_node("fog3", RATE_SINK, "10.68.0.13", str(port)),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        sender = subprocess.run(in_node("fog1", BULK_SENDER, "10.68.0.13", str(port),
                                        str(total), str(seconds)),
                                capture_output=True, text=True, timeout=seconds + 60,
                                check=True)
        samples = [tuple(x) for x in json.loads(sink.communicate(timeout=30)[0])]
    finally:
        if sink.poll() is None:
            sink.kill()
    return int(sender.stdout), samples  # type: ignore[return-value]


def test_meter_holds_an_uncapped_flow_on_a_migration_port(lab):
    kbps, burst_kbit = meter_band(RATE_MBIT)
    limit, burst = kbps * 1000 / 8, burst_kbit * 1000 / 8
    before = classes(lab)["migration"]
    sent, samples = bulk_flow(MIGRATION_PORT, 64 * 2**20, 6.0)
    metered = classes(lab, settle_s=1.5)["migration"]
    got, span = samples[-1][1], samples[-1][0]
    assert got == sent and span > 2.0
    assert metered["bytes"] - before["bytes"] >= got  # the flow was the migration class's
    # The receiver sees payload, the meter frames (and the ACKs coming back): over every
    # window of a second or more, at most the rate plus one burst (2 % for timestamps).
    for i, (t0, b0) in enumerate(samples):
        for t1, b1 in samples[i + 1:]:
            if t1 - t0 >= 1.0:
                assert b1 - b0 <= limit * (t1 - t0) * 1.02 + burst, (t0, t1, b1 - b0)
    metered_rate = got / span
    free_sent, free = bulk_flow(OTHER_PORT, 512 * 2**20, 3.0)
    free_rate = free[-1][1] / free[-1][0]
    print(f"meter {limit / 1e6:.2f} MB/s: migration port {metered_rate / 1e6:.2f} MB/s "
          f"({got} B in {span:.1f} s), other port {free_rate / 1e6:.2f} MB/s")
    assert free[-1][1] == free_sent
    assert free_rate >= 2 * limit  # without the meter the flow would be far above the rate
    assert metered_rate >= 0.1 * limit  # policed, not cut off


def test_vm_migrates_within_the_metered_rate_and_stays_reachable(lab, cli):
    result = cli("vm", "create", VM, "--node", "fog1", "--memory", "128", "--json")
    assert result.status == ExitStatus.SUCCESS, result.err
    assert result.json()["address"] == VM_ADDRESS
    guest = lab.agent(VM, timeout_s=0.5)
    boot = guest.status()["boot_id"]
    samples: list[tuple[float, int]] = []
    done = False

    def sample_rate() -> None:
        while not done:
            samples.append((time.monotonic(), classes(lab)["migration"]["bytes"]))
            time.sleep(0.5)

    import threading
    sampler = threading.Thread(target=sample_rate, daemon=True)
    sampler.start()
    try:
        migrated = cli("migrate", VM, "--to", "fog2", "--json")  # no --bandwidth: the meter's
    finally:
        done = True
        sampler.join()
    assert migrated.status == ExitStatus.SUCCESS, migrated.err
    record = migrated.json()
    assert (record["bandwidth_mib_s"], record["bandwidth_from"]) == (CAP_MIB_S, "core meter")
    assert guest.status()["boot_id"] == boot  # reachable at its address, the same guest
    moved = samples[-1][1] - samples[0][1]
    assert moved > 30 * 2**20  # the migration stream was classified as migration
    kbps, burst_kbit = meter_band(RATE_MBIT)
    limit = kbps * 1000 / 8
    # OVS updates OpenFlow counters from the datapath every ~0.5 s, so a sampled window may
    # hold up to 0.5 s more traffic than its length; the meter's burst may pass on top.
    for i, (t0, b0) in enumerate(samples):
        for t1, b1 in samples[i + 4:]:  # windows of at least two seconds
            assert b1 - b0 <= limit * (t1 - t0 + 0.5) + burst_kbit * 1000 / 8
    peak = max((b1 - b0) / (t1 - t0)
               for (t0, b0), (t1, b1) in zip(samples, samples[4:], strict=False))
    print(f"meter {limit / 1e6:.2f} MB/s, migration capped at {CAP_MIB_S} MiB/s: class "
          f"{moved} B, peak 2 s window {peak / 1e6:.2f} MB/s, record "
          f"{record['transferred_bytes']} B in {record['total_time_ms']} ms")


def test_stream_into_a_proxy_vm_and_a_migration_are_accounted_per_class(lab, cli, tmp_path):
    """Carol's proxy VM runs on fog2, her camera is behind fog1's radio: its records cross
    the core (raw class) while the VM migrates fog2 -> fog1 (migration class)."""
    assert cli("user", "add", "carol", "--node", "fog2").status == ExitStatus.SUCCESS
    added = cli("device", "add", CAMERA, "--user", "carol", "--type", "camera", "--bs", "fog1",
                "--mobility", "static")
    assert added.status == ExitStatus.SUCCESS, added.err
    spec = {"user": "carol", "rate": 10, "ticks": 450, "drain_s": 30,
            "directory": str(directory_path(lab.state_dir)), "lab_subnet": SUBNET,
            "bridge": DEVICE_LINK, "report": str(tmp_path / "report.json"),
            "sources": [{"kind": "camera", "camera": CAMERA, "lat": 40.1, "lon": -74.0,
                         "child": None}]}
    with contextlib.closing(open_store(lab.state_dir)) as store:
        spec = with_keys(spec, store)  # the camera proves its identity with its own key
    before = classes(lab)
    # From fog1's devices namespace: behind fog1's radio, not in the node itself.
    emulator = launch_emulator(Lab.recorded(lab.state_dir, PREFIX).devices_enter_argv("fog1"),
                               spec, tmp_path / "spec.json", tmp_path / "emulator.log")
    try:
        time.sleep(3)
        migrated = cli("migrate", VM, "--to", "fog1", "--json")
        streaming = emulator.poll() is None
        emulator.wait(timeout=120)
    finally:
        if emulator.poll() is None:
            emulator.kill()
    after = classes(lab, settle_s=1.5)
    assert migrated.status == ExitStatus.SUCCESS, migrated.err
    assert streaming  # the stream went on through the whole migration
    record = migrated.json()
    assert record["bandwidth_from"] == "core meter"
    device = json.loads((tmp_path / "report.json").read_text())["devices"][CAMERA]
    assert device["acked"] == device["sent"] == 450
    got = lab.agent("px-carol").request("stream_stats")["devices"][CAMERA]
    assert got["accepted"] == 450 and got["chain"] == device["chain"]

    raw = {k: after["raw"][k] - before["raw"][k] for k in ("bytes", "packets")}
    mig = {k: after["migration"][k] - before["migration"][k] for k in ("bytes", "packets")}
    # Frames minus their headers are the records both ways: the emulator's lines, then the
    # hello/welcome and the proxy's acks (~22 B per ~1.4 kB record) coming back.
    sent, raw_payload = device["sent_bytes"], raw["bytes"] - HEADERS * raw["packets"]
    transferred = record["transferred_bytes"]
    mig_payload = mig["bytes"] - HEADERS * mig["packets"]
    print(f"raw: sent {sent} B, class {raw['bytes']} B / {raw['packets']} frames, "
          f"payload {raw_payload} B ({raw_payload / sent - 1:+.2%}); migration: record "
          f"{transferred} B, class {mig['bytes']} B / {mig['packets']} frames, payload "
          f"{mig_payload} B ({mig_payload / transferred - 1:+.2%})")
    # (With their headers the frames are ~25 % more: ~5 small frames per camera record.)
    assert sent <= raw_payload <= 1.04 * sent
    # QEMU's stream: the RAM pages the record counts, plus device state and page headers.
    assert 0.98 * transferred <= mig_payload <= 1.03 * transferred + 2**20
    assert transferred <= mig["bytes"] <= 1.10 * transferred + 2**20


def test_flow_move_keeps_the_vm_reachable(lab, cli):
    guest = lab.agent(VM, timeout_s=0.5)
    with GapProbe(guest.status) as probe:
        migrated = cli("migrate", VM, "--to", "fog3", "--json")
        moved = cli("core", "move", "--mac", VM_MAC, "--node", "fog3", "--json")
        time.sleep(0.5)
    assert migrated.status == ExitStatus.SUCCESS, migrated.json()["error"]
    assert moved.status == ExitStatus.SUCCESS and moved.json()["port"] == 3
    assert client(lab).stats()["moves"] == {VM_MAC: "fog3"}
    assert probe.answers and probe.gap_s() < 5.0
    assert guest.status()["counter"] > 0
    assert cli("vm", "destroy", VM).status == ExitStatus.SUCCESS
    assert cli("vm", "destroy", "px-carol").status == ExitStatus.SUCCESS


def test_lab_down_stops_ovs_and_the_controller(lab, cli):
    files = ovs_files(lab.state_dir / "labs" / PREFIX, PREFIX)
    pids = [int(files.pidfile(d).read_text()) for d in DAEMONS]
    assert all(psutil.pid_exists(p) for p in pids)
    assert cli("lab", "down").status == ExitStatus.SUCCESS
    assert cli("lab", "down").status == ExitStatus.SUCCESS  # idempotent
    assert not [p for p in pids if psutil.pid_exists(p)]
    assert not files.directory.exists()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"{PREFIX}-" not in links
    assert cli("core", "stats").status == ExitStatus.BAD_INPUT
