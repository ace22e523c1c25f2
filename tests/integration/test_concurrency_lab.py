"""Concurrency as a test (issue 18): several `orchestrator migrate` processes at once on a
real 3-node lab.

- Every VM moves to the next node at the same moment, with a per-node limit: a watcher
  polls libvirt on every node and counts the migrations each node takes part in (outgoing
  jobs at the source, incoming domains at the destination); the peak never exceeds the
  limit, every migration completes, every VM runs exactly once where it was sent.
- Two migrations into a node with room for one, started together: one proceeds, the other
  is refused before anything moves; the node's VM memory, polled throughout, never exceeds
  its capacity.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import libvirt
import pytest

from orchestrator.errors import ExitStatus, OrchestratorError
from orchestrator.fleet import lab_fleet
from orchestrator.fog.session import FleetSession
from tests.integration.conftest import lab_fixture

pytestmark = pytest.mark.lab

PREFIX, SUBNET = "econc", "10.89.0.0/16"
NODE_MIB = 448
lab = lab_fixture(PREFIX, SUBNET, 3, "--node-memory", str(NODE_MIB))
NODES = ("fog1", "fog2", "fog3")
VMS = {"cc-a": "fog1", "cc-b": "fog1", "cc-c": "fog2", "cc-d": "fog3"}
VM_MIB = 128
LIMIT = 1  # migrations a node may take part in at once
CAP = "16"  # MiB/s per migration: ~5 s each, so they overlap if nothing serialises them


def orchestrator(lab_handle, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "EDGEIOT_STATE_DIR": str(lab_handle.state_dir), "EDGEIOT_LAB": PREFIX}
    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, dict, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # our own child, by its handle
        out, err = proc.communicate()
        raise AssertionError(f"orchestrator did not return in {timeout} s: {err}") from None
    return proc.returncode, (json.loads(out) if out.strip() else {}), err


class Watcher:
    """Polls every node's libvirt in a thread: migrations per node, VM memory per node."""

    def __init__(self, lab_handle, interval_s: float = 0.1) -> None:
        self.fleet = lab_fleet(lab_handle.state_dir, PREFIX)
        self.interval_s = interval_s
        self.peak_migrations: Counter[str] = Counter()
        self.peak_memory_mib: Counter[str] = Counter()
        self.polls = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with FleetSession(self.fleet) as session:
            while not self._stop.is_set():
                self._poll(session)
                self._stop.wait(self.interval_s)

    def _poll(self, session: FleetSession) -> None:
        """A node takes part in a VM's migration while its domain of the VM has a job (the
        outgoing side) or is active but paused (the incoming side, until the switch-over)."""
        taking_part: Counter[str] = Counter()
        memory: Counter[str] = Counter()
        for node in NODES:
            try:
                guests = session.hypervisor(node).guests()
            except OrchestratorError:
                self.errors += 1
                continue
            for guest in guests:
                try:  # one domain at a time: one that vanishes must not blind the poll
                    if not guest.is_active():
                        continue
                    memory[node] += guest.memory_bytes() >> 20
                    # NOTE: libvirt refuses job stats on the incoming side ("migration
                    # statistics are available only on the source host"): a paused domain
                    # is counted without asking.
                    if guest.state() == "paused" or guest.job_stats().get(
                            "type", 0) != libvirt.VIR_DOMAIN_JOB_NONE:
                        taking_part[node] += 1
                except OrchestratorError:
                    self.errors += 1
        for node in NODES:
            self.peak_migrations[node] = max(self.peak_migrations[node], taking_part[node])
            self.peak_memory_mib[node] = max(self.peak_memory_mib[node], memory[node])
        self.polls += 1


def record_peaks(lab_handle, ids: list[int]) -> dict[str, int]:
    """Most of these migrations a node took part in at once, by the records' own clocks."""
    from orchestrator.store import open_store
    store = open_store(lab_handle.state_dir)
    try:
        records = [r for r in store.migrations() if r["id"] in ids]
    finally:
        store.close()
    peaks = {}
    for node in NODES:
        spans = [(r["started_at"], r["finished_at"]) for r in records
                 if node in (r["source"], r["destination"])]
        events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
        level = best = 0
        for _, step in events:  # an end sorts before a start at the same instant
            level += step
            best = max(best, level)
        peaks[node] = best
    return peaks


def placements(lab_handle, vms) -> dict[str, tuple[list[str], list[str]]]:
    """vm -> (nodes where it runs, nodes with another copy)."""
    with FleetSession(lab_fleet(lab_handle.state_dir, PREFIX)) as session:
        out = {}
        for vm in vms:
            guests = session.locate(vm)
            out[vm] = ([g.node for g in guests if g.is_running()],
                       [g.node for g in guests if not g.is_running()])
        return out


@pytest.fixture(scope="module")
def fleet_vms(lab) -> Iterator[dict[str, str]]:
    """The VMs, booted one after the other.

    NOTE: `vm create` processes run at once picked the same address for their VMs (each
    reads the free addresses before any has recorded its own), so they are not run at once.
    """
    from orchestrator.cli import main
    try:
        for vm, node in VMS.items():
            assert main(["vm", "create", vm, "--node", node, "--memory", str(VM_MIB)]) \
                == ExitStatus.SUCCESS
        yield dict(VMS)
    finally:
        for vm in VMS:
            main(["vm", "destroy", vm])


def test_n_migrations_at_once_never_exceed_the_per_node_limit(lab, fleet_vms):
    plan = {vm: NODES[(NODES.index(node) + 1) % 3] for vm, node in fleet_vms.items()}
    started = time.monotonic()
    with Watcher(lab) as watcher:
        procs = {vm: orchestrator(lab, "migrate", vm, "--to", dest, "--bandwidth", CAP,
                                  "--max-per-node", str(LIMIT), "--json")
                 for vm, dest in plan.items()}
        results = {vm: finish(proc) for vm, proc in procs.items()}
    wall = time.monotonic() - started
    for vm, (rc, record, err) in results.items():
        assert rc == ExitStatus.SUCCESS and record["status"] == "completed", (vm, err, record)
    assert watcher.polls > 20, "the watcher barely ran"
    # every node is a source and a destination here: a watcher that never saw one of them
    # take part would be blind, and its peak worthless
    assert all(watcher.peak_migrations[n] >= 1 for n in NODES), watcher.peak_migrations
    assert all(p <= LIMIT for p in watcher.peak_migrations.values()), watcher.peak_migrations
    from_records = record_peaks(lab, [r[1]["id"] for r in results.values()])
    assert all(p <= LIMIT for p in from_records.values()), from_records
    where = placements(lab, plan)
    assert where == {vm: ([dest], []) for vm, dest in plan.items()}, where
    fleet_vms.update(plan)
    totals = [r[1]["total_time_ms"] for r in results.values()]
    print(f"{len(plan)} migrations, limit {LIMIT}: wall {wall:.1f} s, each "
          f"{min(totals)}-{max(totals)} ms, peak per node {dict(watcher.peak_migrations)}, "
          f"{watcher.polls} polls ({watcher.errors} domain queries failed), from the "
          f"records {from_records}")


def test_two_migrations_into_a_node_with_room_for_one(lab, cli, fleet_vms):
    target = "fog3"
    others = [vm for vm, node in fleet_vms.items() if node != target][:2]
    there = sum(1 for node in fleet_vms.values() if node == target)
    # a filler leaves the target room for one more VM, not two
    filler_mib = NODE_MIB - there * VM_MIB - VM_MIB - VM_MIB // 2
    assert filler_mib >= 96, "the lab's node memory leaves no room for this test"
    filler = cli("vm", "create", "cc-filler", "--node", target, "--memory", str(filler_mib),
                 "--wait", "0")
    assert filler.status == ExitStatus.SUCCESS, filler.err
    try:
        with Watcher(lab) as watcher:
            procs = {vm: orchestrator(lab, "migrate", vm, "--to", target, "--bandwidth", CAP,
                                      "--max-per-node", "2", "--json") for vm in others}
            results = {vm: finish(proc) for vm, proc in procs.items()}
    finally:
        cli("vm", "destroy", "cc-filler")
    codes = sorted(rc for rc, _, _ in results.values())
    assert codes == [ExitStatus.SUCCESS, ExitStatus.BAD_INPUT], results
    moved = next(vm for vm, (rc, _, _) in results.items() if rc == ExitStatus.SUCCESS)
    refused = next(vm for vm in others if vm != moved)
    assert "not enough free memory" in results[refused][2]
    assert watcher.peak_memory_mib[target] <= NODE_MIB, watcher.peak_memory_mib
    where = placements(lab, others)
    assert where[moved] == ([target], []) and where[refused] == ([fleet_vms[refused]], [])
    fleet_vms[moved] = target
    print(f"into {target} with room for one: {moved} moved, {refused} refused; "
          f"peak VM memory on {target} {watcher.peak_memory_mib[target]} MiB of {NODE_MIB}")
