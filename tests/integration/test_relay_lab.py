"""Issue 13 §5 on a real lab with the SDN core: the MME's location updates reach the
orchestrator only through the controller's relay (`core relay` → `locate --serve`), signed
with the lab's relay key, and the decisions they cause are in the records.

One 2-node lab (`--core sdn`), one user with one mobile device. `locate --serve` runs as its
own process on the lab gateway with the real record store; the updates go in through
`core locate` (the controller's HTTP API, as a base station would send them): the first
places the user's proxy VM at fog1 (a real boot), the second — the device now at fog2's
base station — migrates it there. An unsigned update sent straight to `locate --serve`
is refused and changes nothing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from orchestrator.errors import ExitStatus
from orchestrator.lab.sdn import free_port
from tests.integration.conftest import lab_fixture

pytestmark = pytest.mark.lab

PREFIX, SUBNET, GATEWAY = "erly", "10.85.0.0/16", "10.85.0.1"
DEVICE = "urn:epc:id:giai:0614141.r.1"
lab = lab_fixture(PREFIX, SUBNET, 2, "--core", "sdn")


def wait_listening(address: tuple[str, int], proc: subprocess.Popen[bytes],
                   timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "locate --serve exited"
        try:
            socket.create_connection(address, timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"locate --serve never listened on {address}")


@pytest.fixture
def locate_serve(lab, tmp_path):
    port = free_port(GATEWAY)
    env = {**os.environ, "EDGEIOT_STATE_DIR": str(lab.state_dir), "EDGEIOT_LAB": PREFIX}
    log = open(tmp_path / "locate-serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from orchestrator.cli import run; run()", "locate", "--serve",
         f"{GATEWAY}:{port}", "--r-data", "10"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_listening((GATEWAY, port), proc)
        yield f"{GATEWAY}:{port}"
    finally:
        proc.terminate()  # our own child, by its handle
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        print((tmp_path / "locate-serve.log").read_text()[-2000:])


def test_location_updates_through_the_relay_are_decided_and_recorded(lab, cli, locate_serve):
    for args in (["bs", "add", "b1", "--node", "fog1"], ["bs", "add", "b2", "--node", "fog2"],
                 ["user", "add", "rita"],
                 ["device", "add", DEVICE, "--user", "rita", "--type", "gps", "--bs", "fog1"]):
        done = cli(*args)
        assert done.status == ExitStatus.SUCCESS, (args, done.err)
    relayed = cli("core", "relay", locate_serve, "--json")
    assert relayed.status == ExitStatus.SUCCESS and relayed.json()["locate_endpoint"] == \
        locate_serve

    # Unsigned, straight to locate --serve: refused, the connection closed, nothing recorded.
    host, port = locate_serve.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(json.dumps({"device": DEVICE, "bs": "b2"}).encode() + b"\n")
        forged = json.loads(sock.makefile("rb").readline())
    assert forged["ok"] is False and "unauthenticated" in forged["error"]

    timings = {}
    for bs, verdict in (("b1", "place"), ("b2", "migrate")):
        started = time.monotonic()
        sent = cli("core", "locate", DEVICE, "--bs", bs, "--json")
        timings[bs] = round(time.monotonic() - started, 2)
        assert sent.status == ExitStatus.SUCCESS, sent.err
        actions = sent.json()["actions"]
        assert [a["verdict"] for a in actions] == [verdict], actions
        assert actions[0]["result"]["status"] not in ("failed", "skipped"), actions

    decisions = cli("decisions", "--json")
    assert decisions.status == ExitStatus.SUCCESS
    recorded = [(d["data"]["verdict"], d["data"]["destination"]) for d in decisions.json()]
    assert recorded == [("place", "fog1"), ("migrate", "fog2")], recorded
    vms = {v["name"]: v for v in cli("vm", "list", "--json").json()}
    proxy = next(v for v in vms.values() if v["role"] == "proxy")
    assert proxy["node"] == "fog2" and proxy["state"] == "running"
    locations = cli("core", "relay", "--json").json()
    assert locations["received"] == 2  # the forged one never reached the controller
    print(f"relay → locate --serve: place {timings['b1']} s, migrate {timings['b2']} s")
