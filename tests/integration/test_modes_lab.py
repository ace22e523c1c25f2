"""Migration modes and the user's cancel on a real lab (issue 18), each run as a user runs it:
an `orchestrator migrate` process.

One 2-node lab and one 128 MiB VM whose agent dirties memory faster than the capped link
sends it, so plain pre-copy would never converge:
- post-copy: the timeout policy switches, the migration finishes, the post-copy phase keeps
  to --bandwidth, the record's figures are the real ones (not zeros); the guest arrives
  alive: one boot id, its counter goes on, its dirtier still writes, no kernel or agent
  crash on its console (the TCG lost-dirty-page bug, docs/tcg-migration-corruption.md,
  crashed such guests within a second);
- auto-converge: QEMU throttles the guest harder round after round and the record keeps
  the throttle percentage over time (under TCG it did not make this guest converge: see
  the test's note);
- cancel: SIGINT just as the migration starts, SIGTERM once data moves: the job is
  aborted, the record says `cancelled`, the VM runs on the source exactly once;
- the destination's QEMU killed mid-migration: the VM stays on the source;
- the source's QEMU killed mid-migration: nothing can run the VM any more: the record says
  `lost`, the metric counts it, and no copy is left on the destination.

NOTE: the guest agent has no op that checksums a known buffer, so "memory intact" is the
boot id, the counter, the dirtier and a clean console (see docs/fault-matrix.md).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from orchestrator.errors import ExitStatus
from orchestrator.fleet import lab_fleet
from orchestrator.fog.guest_agent import GuestAgent
from orchestrator.fog.session import FleetSession
from orchestrator.metrics import migration_families
from orchestrator.store import open_store
from tests.integration.conftest import lab_fixture

pytestmark = pytest.mark.lab

PREFIX, SUBNET = "emode", "10.87.0.0/16"
lab = lab_fixture(PREFIX, SUBNET, 2, "--node-memory", "320")
VM = "px-modes"
CAP_MIB_S = 8  # the link cap of every migration here
DIRTY = {"pages_per_s": 5000, "working_set_mib": 12}  # ~20 MB/s of writes: > the cap
CPU_BOUND = {"pages_per_s": 300_000, "working_set_mib": 4}  # as fast as the vCPU writes
AUTO_CONVERGE_TIMEOUT_S = 45  # the throttle reached its top in 34 s here
# A guest kernel or agent that met corrupted memory says so on its console.
CRASH = re.compile(r"BUG:|Oops|general protection|segfault|Kernel panic|exited with status")


def orchestrator(lab_handle, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "EDGEIOT_STATE_DIR": str(lab_handle.state_dir), "EDGEIOT_LAB": PREFIX}
    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 150) -> tuple[int, dict, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # our own child, by its handle
        out, err = proc.communicate()
        raise AssertionError(f"orchestrator migrate did not return in {timeout} s: {err}") \
            from None
    return proc.returncode, (json.loads(out) if out.strip() else {}), err


def agent(lab_handle) -> GuestAgent:
    """The VM's guest agent, signing with the VM's key from the records."""
    store = open_store(lab_handle.state_dir)
    try:
        record, key = store.vm(VM), store.vm_key(VM)
    finally:
        store.close()
    assert record is not None and record.address
    return GuestAgent(record.address, lab_fleet(lab_handle.state_dir, PREFIX).policy,
                      timeout_s=5.0, key=key)


def world(lab_handle) -> tuple[list[str], list[str]]:
    """(nodes where the VM runs, nodes holding any other copy of it)."""
    with FleetSession(lab_fleet(lab_handle.state_dir, PREFIX)) as session:
        guests = session.locate(VM)
        return ([g.node for g in guests if g.is_running()],
                [g.node for g in guests if not g.is_running()])


def assert_runs_once(lab_handle, where: str, settle_s: float = 45) -> None:
    deadline = time.monotonic() + settle_s
    while True:
        running, others = world(lab_handle)
        if running == [where] and not others:
            return
        assert time.monotonic() < deadline, f"running on {running}, other copies on {others}"
        time.sleep(1)


def domain_xml(lab_handle, node: str) -> str:
    with FleetSession(lab_fleet(lab_handle.state_dir, PREFIX)) as session:
        guest = session.hypervisor(node).lookup(VM)
        assert guest is not None
        return guest.xml()


def console(lab_handle, node: str) -> Path:
    return lab_handle.state_dir / "labs" / PREFIX / node / "log" / "qemu" / f"{VM}-console.log"


def console_since(lab_handle, node: str, offset: int) -> str:
    path = console(lab_handle, node)
    return path.read_bytes()[offset:].decode(errors="replace") if path.exists() else ""


def console_size(lab_handle, node: str) -> int:
    path = console(lab_handle, node)
    return path.stat().st_size if path.exists() else 0


def wait_for_record(cli, proc: subprocess.Popen[str], moving: bool,
                    timeout: float = 60) -> dict:
    """The running migration's record, once it exists (and, if `moving`, shows bytes sent);
    fails at once, with what it said, if the process has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            rc, record, err = finish(proc)
            raise AssertionError(f"orchestrator migrate ended first: {rc} {err} {record}")
        running = cli("migrations", "--status", "running", "--samples", "--json").json()
        if running and (not moving or any(s["processed_bytes"] > 0
                                          for s in running[0]["samples"])):
            return running[0]
        time.sleep(0.05 if not moving else 0.2)
    proc.kill()  # our own child, by its handle
    proc.communicate()
    raise AssertionError("no running migration record")


def qemu_pid(lab_handle, node: str) -> int:
    """The VM's QEMU in `node`'s network namespace (found by namespace, ended by pid)."""
    netns = os.stat(f"/run/netns/{PREFIX}-{node}").st_ino
    for proc in psutil.process_iter(["cmdline"]):
        if f"guest={VM}," not in " ".join(proc.info["cmdline"] or []):
            continue
        try:
            if os.readlink(f"/proc/{proc.pid}/ns/net") == f"net:[{netns}]":
                return proc.pid
        except OSError:
            continue
    raise AssertionError(f"no QEMU of {VM} on {node}")


def hop(lab_handle) -> tuple[str, str]:
    """(where the VM runs now, the other node): each case starts from wherever the one
    before left the VM."""
    running, _ = world(lab_handle)
    assert len(running) == 1, running
    return running[0], next(n for n in ("fog1", "fog2") if n != running[0])


def alive_after(lab_handle, before: dict) -> dict:
    """The guest's status now: the same boot, a counter that went on, a dirtier that writes."""
    now = agent(lab_handle).wait_ready(30)
    assert now["boot_id"] == before["boot_id"], "the guest rebooted"
    assert now["counter"] > before["counter"], "the counter did not go on"
    return now


@pytest.fixture(scope="module")
def vm(lab) -> Iterator[str]:
    from orchestrator.cli import main
    assert main(["vm", "create", VM, "--node", "fog1", "--memory", "128"]) == ExitStatus.SUCCESS
    try:
        yield VM
    finally:
        main(["vm", "destroy", VM])


@pytest.fixture
def dirtying(lab, vm) -> Iterator[dict]:
    """The guest dirtying memory faster than the cap while the test runs."""
    guest = agent(lab)
    guest.set_dirtier(**DIRTY)
    try:
        yield guest.status()
    finally:
        try:
            agent(lab).set_dirtier(pages_per_s=0, working_set_mib=0)
        except Exception:  # noqa: BLE001 - a lost guest has no agent to stop
            pass


def post_switch_rate(record: dict) -> float:
    """Bytes/s the stream carried after the switch to post-copy, from the live samples."""
    after = [s for s in record["samples"] if s["t_s"] >= record["policy_applied_at_s"] + 0.5]
    assert len(after) >= 3, f"too few samples after the switch: {after}"
    first, last = after[0], after[-1]
    return (last["processed_bytes"] - first["processed_bytes"]) / (last["t_s"] - first["t_s"])


def test_postcopy_finishes_a_guest_that_would_not_converge(lab, cli, vm, dirtying):
    source, target = hop(lab)
    offset = console_size(lab, target)
    proc = orchestrator(lab, "migrate", VM, "--to", target, "--bandwidth", str(CAP_MIB_S),
                        "--postcopy", "--timeout", "6", "--json")
    rc, record, err = finish(proc)
    assert rc == ExitStatus.SUCCESS, err
    assert record["status"] == "completed" and record["timeout_action"] == "postcopy"
    assert record["policy_applied_at_s"] is not None  # the timeout or the stall rule switched
    # the switch happened with data still to send: plain pre-copy had not converged
    last_pre = [s for s in record["samples"] if s["t_s"] < record["policy_applied_at_s"]][-1]
    assert last_pre["remaining_bytes"] > 0
    assert any(s["postcopy_requests"] > 0 for s in record["samples"])
    # the record's figures are the job's own, not zeros
    for key in ("total_time_ms", "transferred_bytes", "iterations", "downtime_ms"):
        assert record[key], (key, record[key])
    assert record["total_time_ms"] / 1000 > record["policy_applied_at_s"]
    # --bandwidth held after the switch too
    cap = CAP_MIB_S * 2**20
    rate = post_switch_rate(record)
    assert rate <= 1.15 * cap, f"post-copy ran at {rate / 2**20:.1f} MiB/s, cap {CAP_MIB_S}"
    assert record["transferred_bytes"] / (record["total_time_ms"] / 1000) <= 1.15 * cap
    assert_runs_once(lab, target)
    pti = "pti=on" in domain_xml(lab, target)  # (the XML carries the VM's key: not shown)
    assert pti, "the TCG lost-dirty-page workaround (pti=on) is off"
    now = alive_after(lab, dirtying)
    assert now["dirty"]["pages_per_s"] == DIRTY["pages_per_s"]
    assert not CRASH.search(console_since(lab, target, offset)), console_since(
        lab, target, offset)[-2000:]
    print("post-copy:", {k: record[k] for k in ("total_time_ms", "transferred_bytes",
                                                "iterations", "downtime_ms",
                                                "policy_applied_at_s")},
          f"post-copy phase {rate / 2**20:.2f} MiB/s")


def test_auto_converge_throttles_the_guest_and_records_it_over_time(lab, cli, vm, dirtying):
    """`--auto-converge`: QEMU throttles the vCPU more each round the guest out-dirties the
    link, and every sample keeps the throttle, so the record shows it rising.

    NOTE (measured here, TCG): throttling did not make this guest converge. Against a
    writer flat out over 4 MiB it went 20 % → 99 % in 34 s, QEMU's dirty rate fell only
    from ~2,050 to ~820 pages/s (a page write costs the vCPU so little that 1 % of its time
    still rewrites most of the set every round), and the remaining data stayed ~2.9 MB,
    above the ~2.5 MB a 300 ms downtime allows at 8 MiB/s, until the 120 s timeout (the
    paced 5,000 pages/s writer and a 12 MiB set behaved alike). So the timeout policy has
    the last word: completed at the destination, or aborted with the VM on the source;
    either way exactly once and intact.
    """
    source, target = hop(lab)
    agent(lab).set_dirtier(**CPU_BOUND)
    offset = {n: console_size(lab, n) for n in (source, target)}
    proc = orchestrator(lab, "migrate", VM, "--to", target, "--bandwidth", str(CAP_MIB_S),
                        "--auto-converge", "--timeout", str(AUTO_CONVERGE_TIMEOUT_S), "--json")
    rc, record, err = finish(proc)
    throttles = [s["throttle_pct"] for s in record.get("samples", [])]
    assert record.get("status") in ("completed", "aborted"), (rc, err, record.get("error"))
    positive = [t for t in throttles if t > 0]
    assert positive, "QEMU never throttled the guest"
    assert len(set(positive)) >= 3, f"the throttle never rose: {sorted(set(throttles))}"
    assert positive == sorted(positive), "the throttle went down while the job ran"
    assert record["throttle_pct_max"] == max(throttles)
    stored = cli("migrations", "--json", "--samples", "--limit", "1").json()[0]
    assert [s["throttle_pct"] for s in stored["samples"]] == throttles  # kept over time
    if record["status"] == "aborted":
        assert record["timeout_action"] == "abort" and rc == ExitStatus.ERROR
    where = target if record["status"] == "completed" else source
    assert_runs_once(lab, where)
    now = alive_after(lab, dirtying)
    assert now["dirty"]["pages_per_s"] == CPU_BOUND["pages_per_s"]
    assert not CRASH.search(console_since(lab, where, offset[where]))
    print("auto-converge:", record["status"], {k: record[k] for k in (
        "total_time_ms", "iterations", "downtime_ms", "throttle_pct_max")},
          "throttle over time:", sorted(set(throttles)))


def test_ctrl_c_as_the_migration_starts_cancels_it(lab, cli, vm):
    source, target = hop(lab)
    before = agent(lab).status()
    proc = orchestrator(lab, "migrate", VM, "--to", target, "--bandwidth", "4", "--json")
    started = wait_for_record(cli, proc, moving=False)
    proc.send_signal(signal.SIGINT)
    rc, record, err = finish(proc)
    assert rc == ExitStatus.INTERRUPTED, err
    assert record["id"] == started["id"] and record["status"] == "cancelled"
    assert record["placement"] == [source] and "cancelled by the user" in record["error"]
    assert cli("migrations", "--json", "--limit", "1").json()[0]["status"] == "cancelled"
    assert_runs_once(lab, source)
    alive_after(lab, before)
    moved = max((s["processed_bytes"] for s in record["samples"]), default=0)
    print(f"SIGINT at record creation: cancelled after {moved} bytes")


def test_sigterm_once_data_moves_cancels_it(lab, cli, vm):
    source, target = hop(lab)
    before = agent(lab).status()
    proc = orchestrator(lab, "migrate", VM, "--to", target, "--bandwidth", "4", "--json")
    wait_for_record(cli, proc, moving=True)
    proc.send_signal(signal.SIGTERM)
    rc, record, err = finish(proc)
    assert rc == ExitStatus.INTERRUPTED, err
    assert record["status"] == "cancelled" and record["placement"] == [source]
    assert max(s["processed_bytes"] for s in record["samples"]) > 0
    assert_runs_once(lab, source)
    alive_after(lab, before)
    assert cli("reconcile", "--json").json()["closed_records"] == []  # nothing left open


def test_destination_qemu_killed_mid_migration(lab, cli, vm):
    source, target = hop(lab)
    before = agent(lab).status()
    proc = orchestrator(lab, "migrate", VM, "--to", target, "--bandwidth", "4", "--json")
    wait_for_record(cli, proc, moving=True)
    os.kill(qemu_pid(lab, target), signal.SIGKILL)
    rc, record, err = finish(proc)
    assert rc == ExitStatus.ERROR, err
    assert record["status"] == "failed" and record["placement"] == [source]
    assert_runs_once(lab, source)
    alive_after(lab, before)


def test_source_qemu_crash_mid_migration_is_lost(lab, cli, vm):
    source, target = hop(lab)
    proc = orchestrator(lab, "migrate", VM, "--to", target, "--bandwidth", "4", "--json")
    wait_for_record(cli, proc, moving=True)
    os.kill(qemu_pid(lab, source), signal.SIGKILL)
    rc, record, err = finish(proc)
    assert rc == ExitStatus.ERROR, err
    assert record["status"] == "lost" and record["placement"] == []
    assert cli("migrations", "--json", "--limit", "1").json()[0]["status"] == "lost"
    store = open_store(lab.state_dir)
    try:
        families = {f.name: f for f in migration_families(store.migrations(), lambda _: None)}
    finally:
        store.close()
    outcomes = families["edgeiot_migrations"].samples
    assert [s.value for s in outcomes if s.labels.get("status") == "lost"] == [1.0], outcomes
    deadline = time.monotonic() + 45  # no ghost: the destination's incoming copy goes
    while True:
        running, others = world(lab)
        if not running and set(others) <= {source}:
            break
        assert time.monotonic() < deadline, f"running on {running}, other copies on {others}"
        time.sleep(1)
    print("source QEMU killed:", record["status"], record["error"])
