import multiprocessing
import queue as queue_module
import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from orchestrator.errors import OrchestratorError
from orchestrator.store import SCHEMA_VERSION, Store, VmRecord


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "records.sqlite")
    yield s
    s.close()


def test_vm_records_round_trip(store):
    vm = VmRecord("proxy-a", "uuid-1", "fog1", 256, 1, "10.77.1.1", "52:54:00:00:00:01")
    store.add_vm(vm)
    assert store.vm("proxy-a").address == "10.77.1.1"
    store.set_vm_node("proxy-a", "fog2")
    assert store.vm("proxy-a").node == "fog2"
    assert store.used_addresses() == {"10.77.1.1"}
    store.remove_vm("proxy-a")
    assert store.vm("proxy-a") is None and store.vms() == []


def test_migration_record_with_samples(store):
    mid = store.start_migration("vm", "fog1", "fog2", {"bandwidth_mib_s": 20},
                                {"total_time_s": 4.2}, pid=123)
    assert store.migrations(status="running")[0]["id"] == mid
    store.finish_migration(mid, "completed", {"total_time_ms": 4100},
                           [{"t_s": 0.0, "iteration": 1}, {"t_s": 0.2, "iteration": 2}])
    record = store.migration(mid)
    assert record["status"] == "completed"
    assert record["params"] == {"bandwidth_mib_s": 20}
    assert record["prediction"] == {"total_time_s": 4.2}
    assert record["result"] == {"total_time_ms": 4100}
    assert [s["iteration"] for s in record["samples"]] == [1, 2]
    assert store.migrations(vm="other") == []


def test_events(store):
    store.add_event("decision", "alice", {"migrate": True})
    assert store.events("decision")[0]["data"] == {"migrate": True}


def test_schema_is_versioned_and_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    Store(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(OrchestratorError, match="newer"):
        Store(path)


def test_live_samples_are_visible_before_the_migration_ends(store):
    mid = store.start_migration("vm", "fog1", "fog2", {}, None, pid=1)
    store.add_sample(mid, 0, {"iteration": 1})
    store.add_sample(mid, 1, {"iteration": 2})
    assert [s["iteration"] for s in store.samples(mid)] == [1, 2]
    store.finish_migration(mid, "completed", {}, [{"iteration": 1}, {"iteration": 2}])
    assert len(store.samples(mid)) == 2


# --- allocation and memory accounting across processes (issue 13) ---------------------------

TEST_DOMAIN_MIB = 8192  # test:///default's own "test" domain, active in every process


def _inventory(tmp_path: Path, capacity_mib: int) -> str:
    path = tmp_path / "hosts.ini"
    path.write_text("[all:vars]\nvm_network=10.99.0.0/28\n\n[fog_nodes]\n"
                    "fogt libvirt_uri=test:///default domain_type=qemu image_dir=/srv/img "
                    f"memory_mib={capacity_mib}\n")
    return str(path)


def _create(state_dir: str, inventory: str, vm: str, memory_mib: int, barrier: object,
            results: object, hold_s: float) -> None:
    """One orchestrator process creating a VM: room and address under `placement`, then
    the record, as VmService.create does."""
    from orchestrator.edge.capacity import placement
    from orchestrator.edge.vms import mac_for
    from orchestrator.errors import UserError
    from orchestrator.fleet import resolve_fleet
    from orchestrator.fog.session import FleetSession
    from orchestrator.store import open_store

    records = open_store(Path(state_dir))
    with FleetSession(resolve_fleet(Path(state_dir), inventory)) as session:
        session.hypervisor("fogt")  # connected before the race starts
        barrier.wait(30)  # type: ignore[attr-defined]
        try:
            with placement(session, records, vm, "fogt", memory_mib << 20) as placed:
                time.sleep(hold_s)  # the domain is being defined and booted
                vm_uuid = str(uuid.uuid4())
                mac = mac_for(vm_uuid, placed.address)
                records.add_vm(VmRecord(vm, vm_uuid, "fogt", memory_mib, 1, placed.address, mac))
            results.put((vm, "created", placed.address, mac))  # type: ignore[attr-defined]
        except UserError as exc:
            results.put((vm, "refused", str(exc), None))  # type: ignore[attr-defined]
    records.close()


def _race(tmp_path: Path, capacity_mib: int, vms: list[str], memory_mib: int = 128,
          hold_s: float = 0.3) -> list[tuple[str, str, str | None, str | None]]:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(len(vms)), ctx.Queue()
    state = tmp_path / "state"
    Store(state / "records.sqlite").close()
    inventory = _inventory(tmp_path, capacity_mib)
    procs = [ctx.Process(target=_create, args=(str(state), inventory, vm, memory_mib, barrier,
                                                results, hold_s)) for vm in vms]
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


def test_processes_creating_vms_at_once_never_share_an_address_or_mac(tmp_path):
    created = _race(tmp_path, TEST_DOMAIN_MIB + 4 * 128, ["va", "vb", "vc", "vd"])
    assert [r[1] for r in created] == ["created"] * 4
    assert len({r[2] for r in created}) == 4 and len({r[3] for r in created}) == 4
    records = Store(tmp_path / "state" / "records.sqlite")
    try:
        assert sorted(v.address for v in records.vms()) == sorted(r[2] for r in created)
        assert records.used_addresses() == {r[2] for r in created}  # allocations released
    finally:
        records.close()


def test_processes_creating_vms_at_once_never_overcommit_a_node(tmp_path):
    outcome = _race(tmp_path, TEST_DOMAIN_MIB + 200, ["va", "vb"])  # room for one 128 MiB VM
    assert sorted(r[1] for r in outcome) == ["created", "refused"]
    refused = next(r for r in outcome if r[1] == "refused")
    assert "not enough free memory" in refused[2] and "promised elsewhere" in refused[2]


def test_an_allocation_of_a_dead_process_is_given_again(store):
    hosts = ["10.99.0.1", "10.99.0.2"]
    assert store.allocate_address("va", hosts, (999_999, 1.0), lambda *_: True) == "10.99.0.1"
    assert store.allocate_address("vb", hosts, (1, 1.0), lambda *_: True) == "10.99.0.2"
    with pytest.raises(OrchestratorError, match="no free VM address"):
        store.allocate_address("vc", hosts, (1, 1.0), lambda *_: True)
    alive = {"va": False}
    again = store.allocate_address("vc", hosts, (1, 1.0),
                                   lambda pid, _s: alive.get("va") if pid == 999_999 else True)
    assert again == "10.99.0.1"  # va's process died before recording its VM
    with pytest.raises(sqlite3.IntegrityError):  # never twice, whatever the code above does
        store.db.execute("INSERT INTO allocations VALUES ('vd', '10.99.0.1', 1, 1.0, 0)")
