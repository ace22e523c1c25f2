import sqlite3

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
