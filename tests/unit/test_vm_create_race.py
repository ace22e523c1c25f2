"""`VmService.create` from several orchestrator processes at once (issue 13).

Each process runs the real create path against its own libvirt test:///default (the test
driver's state is per process, so a node's domains are invisible to the other processes,
as they are before a domain exists on a real node). What the processes share is what two
`orchestrator vm create` share: the state directory (records, reservation locks). The
define step is slowed down so every process is inside it at once; without the
transactional placement each process then picks the first free address it sees (the same
one) and the last room on the node twice.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import time
from pathlib import Path
from typing import Any

from orchestrator.store import Store

TEST_DOMAIN_MIB = 8192  # test:///default's own "test" domain, active in every process
DEFINE_S = 1.5  # how long defining and starting a domain takes in the race


def _inventory(tmp_path: Path, capacity_mib: int) -> str:
    path = tmp_path / "hosts.ini"
    path.write_text("[all:vars]\nvm_network=10.99.0.0/28\n\n[fog_nodes]\n"
                    "fogt libvirt_uri=test:///default domain_type=qemu image_dir=/srv/img "
                    f"memory_mib={capacity_mib}\n")
    return str(path)


def _create(state_dir: str, inventory: str, vm: str, memory_mib: int, barrier: Any,
            results: Any) -> None:
    """One orchestrator process: `VmService.create`, with a slow define."""
    from orchestrator.edge.vms import VmService
    from orchestrator.errors import OrchestratorError
    from orchestrator.fleet import resolve_fleet
    from orchestrator.fog.hypervisor import Hypervisor
    from orchestrator.fog.session import FleetSession
    from orchestrator.store import open_store

    define = Hypervisor.define_and_start

    def slow_define(self: Hypervisor, xml: str) -> Any:
        time.sleep(DEFINE_S)  # every other process reaches its own define meanwhile
        return define(self, xml)

    Hypervisor.define_and_start = slow_define  # type: ignore[method-assign]
    records = open_store(Path(state_dir))
    try:
        with FleetSession(resolve_fleet(Path(state_dir), inventory)) as session:
            session.hypervisor("fogt")  # connected before the race starts
            barrier.wait(30)
            try:
                record = VmService(session, records).create(vm, "fogt", memory_mib, wait_s=None)
                results.put((vm, "created", record.address, record.mac))
            except OrchestratorError as exc:
                results.put((vm, "refused", str(exc), None))
    finally:
        records.close()


def _race(tmp_path: Path, capacity_mib: int, vms: list[str],
          memory_mib: int = 128) -> list[tuple[str, str, str | None, str | None]]:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(len(vms)), ctx.Queue()
    state = tmp_path / "state"
    Store(state / "records.sqlite").close()
    inventory = _inventory(tmp_path, capacity_mib)
    procs = [ctx.Process(target=_create, args=(str(state), inventory, vm, memory_mib, barrier,
                                                results)) for vm in vms]
    for proc in procs:
        proc.start()
    out = []
    for _ in vms:
        try:
            out.append(results.get(timeout=60))
        except queue_module.Empty:
            break
    for proc in procs:
        proc.join(10)
    assert len(out) == len(vms), "every process reported"
    return sorted(out)


def test_vm_create_in_three_processes_at_once_gives_three_addresses_and_macs(
        tmp_path: Path) -> None:
    created = _race(tmp_path, TEST_DOMAIN_MIB + 3 * 128, ["va", "vb", "vc"])
    assert [r[1] for r in created] == ["created"] * 3, created
    assert len({r[2] for r in created}) == 3 and len({r[3] for r in created}) == 3
    records = Store(tmp_path / "state" / "records.sqlite")
    try:
        assert sorted(str(v.address) for v in records.vms()) == sorted(str(r[2]) for r in created)
        assert records.used_addresses() == {r[2] for r in created}  # allocations released
    finally:
        records.close()


def test_vm_create_in_two_processes_at_once_never_overcommits_the_node(tmp_path: Path) -> None:
    outcome = _race(tmp_path, TEST_DOMAIN_MIB + 200, ["va", "vb"])  # room for one 128 MiB VM
    assert sorted(r[1] for r in outcome) == ["created", "refused"], outcome
    refused = str(next(r[2] for r in outcome if r[1] == "refused"))
    assert "not enough free memory" in refused and "promised elsewhere" in refused
    records = Store(tmp_path / "state" / "records.sqlite")
    try:
        assert [v.name for v in records.vms()] == [next(r[0] for r in outcome
                                                        if r[1] == "created")]
        assert records.used_addresses() == {v.address for v in records.vms()}
    finally:
        records.close()
