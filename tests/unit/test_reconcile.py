"""reconcile: the pure repair plan, and what it must never touch (leases, libvirt jobs,
post-copy), with real processes as lease owners."""

import multiprocessing
import time
from dataclasses import dataclass, field

import psutil
import pytest

from orchestrator.edge.reconcile import (
    Observed,
    Reconciler,
    migration_lease,
    owner_alive,
    plan_repairs,
    this_process,
)
from orchestrator.store import Store, VmRecord


def record(id_, vm="vm", source="fog1", destination="fog2"):
    return {"id": id_, "vm": vm, "source": source, "destination": destination}


def test_orphan_that_arrived_is_closed_as_completed_and_placement_fixed():
    plan = plan_repairs([record(7)], {"vm": Observed("vm", ("fog2",), ())}, {"vm": "fog1"})
    assert plan.close_records == [(7, "completed",
                                   "orchestrator died; the VM arrived at the destination")]
    assert plan.set_placement == [("vm", "fog2")]
    assert plan.problems == [] and plan.remove_leftovers == []


def test_orphan_that_stayed_is_failed_and_the_paused_incoming_domain_removed():
    plan = plan_repairs([record(3)], {"vm": Observed("vm", ("fog1",), ("fog2",))},
                        {"vm": "fog1"})
    assert plan.close_records[0][:2] == (3, "failed")
    assert plan.remove_leftovers == [("vm", "fog2")]
    assert plan.set_placement == []


def test_running_orphan_job_is_aborted():
    plan = plan_repairs([record(1)], {"vm": Observed("vm", ("fog1",), (), jobs=("fog1",))},
                        {"vm": "fog1"})
    assert plan.abort_jobs == [("vm", "fog1")]


def test_split_brain_is_reported_not_guessed():
    plan = plan_repairs([], {"vm": Observed("vm", ("fog1", "fog2"), ())}, {"vm": "fog1"})
    assert plan.problems and plan.remove_leftovers == [] and plan.set_placement == []


def test_vanished_vm_is_a_problem():
    plan = plan_repairs([record(2)], {"vm": Observed("vm", (), ())}, {"vm": "fog1"})
    assert plan.problems == ["vm runs on no node"]
    assert plan.close_records[0][1] == "failed"


def test_consistent_world_needs_nothing():
    plan = plan_repairs([], {"vm": Observed("vm", ("fog1",), ())}, {"vm": "fog1"})
    assert not (plan.abort_jobs or plan.remove_leftovers or plan.close_records
                or plan.set_placement or plan.problems)


# --- leases, libvirt jobs and post-copy: what reconcile must never touch (issue 13) ----------

def test_a_vm_under_a_live_lease_is_left_alone_even_with_a_paused_copy():
    seen = Observed("vm", ("fog1",), ("fog2",), owner=4242)
    plan = plan_repairs([], {"vm": seen}, {"vm": "fog3"})
    assert plan.remove_leftovers == [] and plan.set_placement == [] and plan.abort_jobs == []
    assert plan.left_alone == [("vm", "its migration is owned by live process 4242")]


def test_post_copy_is_never_repaired_not_even_for_an_orphan():
    # The source is paused in post-copy, the destination runs: the paused copy is the
    # running VM's other half.
    seen = Observed("vm", ("fog2",), ("fog1",), jobs=("fog1",), postcopy=("fog1", "fog2"))
    plan = plan_repairs([record(5)], {"vm": seen}, {"vm": "fog1"})
    assert plan.remove_leftovers == [] and plan.abort_jobs == [] and plan.close_records == []
    assert "post-copy" in plan.left_alone[0][1]


def test_a_job_no_dead_process_explains_is_left_alone():
    seen = Observed("vm", ("fog1",), ("fog2",), jobs=("fog1",))
    plan = plan_repairs([], {"vm": seen}, {"vm": "fog1"})
    assert plan.abort_jobs == [] and plan.remove_leftovers == []
    assert "libvirt job" in plan.left_alone[0][1]


def _sleeper(seconds: float) -> None:
    time.sleep(seconds)


def test_owner_alive_checks_pid_and_start_time():
    me = this_process()
    assert owner_alive(*me)
    assert not owner_alive(me[0], me[1] - 100)  # a reused pid is no owner
    child = multiprocessing.get_context("spawn").Process(target=_sleeper, args=(30,))
    child.start()
    started = psutil.Process(child.pid).create_time()
    assert owner_alive(child.pid, started)
    child.kill()
    child.join()
    assert not owner_alive(child.pid, started)


@dataclass
class FakeDom:
    state_reason: tuple[int, int]

    def state(self):
        return self.state_reason


@dataclass
class FakeGuest:
    name: str
    node: str
    dom: FakeDom
    removed: list = field(default_factory=list)

    def is_running(self):
        return self.dom.state_reason[0] == 1

    def is_active(self):
        return True

    def job_stats(self):
        return {"type": 0}

    def remove(self):
        self.removed.append(self.node)


class FakeSession:
    def __init__(self, guests):
        self.guests = guests

    def locate(self, name):
        return [g for g in self.guests if g.name == name]

    def hypervisor(self, node):
        session = self

        class Hv:
            def lookup(self, name):
                return next((g for g in session.guests if g.name == name and g.node == node),
                            None)
        return Hv()


@pytest.fixture
def records(tmp_path):
    store = Store(tmp_path / "records.sqlite")
    store.add_vm(VmRecord("vm", "u", "fog1", 128, 1, None, "52:54:00:00:00:01"))
    yield store
    store.close()


def test_reconcile_spares_another_live_process_migration_and_repairs_after_it_died(records):
    removed: list[str] = []
    paused = FakeGuest("vm", "fog2", FakeDom((3, 2)), removed)  # an incoming, paused copy
    running = FakeGuest("vm", "fog1", FakeDom((1, 1)), removed)
    session = FakeSession([running, paused])
    child = multiprocessing.get_context("spawn").Process(target=_sleeper, args=(30,))
    child.start()
    owner = (child.pid, psutil.Process(child.pid).create_time())
    records.take_lease("vm", owner, "fog1", "fog2")
    records.start_migration("vm", "fog1", "fog2", {}, None, child.pid)
    try:
        report = Reconciler(session, records).run()  # type: ignore[arg-type]
        assert removed == [] and report["closed_records"] == []
        assert report["left_alone"] == [("vm", f"its migration is owned by live process "
                                               f"{child.pid}")]
    finally:
        child.kill()
        child.join()
    report = Reconciler(session, records).run()  # type: ignore[arg-type]
    assert removed == ["fog2"]
    assert report["closed_records"][0][1] == "failed"


def test_reconcile_never_removes_a_source_paused_in_post_copy(records):
    removed: list[str] = []
    source = FakeGuest("vm", "fog1", FakeDom((3, 12)), removed)  # PAUSED_POSTCOPY
    destination = FakeGuest("vm", "fog2", FakeDom((1, 10)), removed)  # RUNNING_POSTCOPY
    records.start_migration("vm", "fog1", "fog2", {}, None, 2**22 + 17)  # a dead pid
    report = Reconciler(FakeSession([source, destination]), records).run()  # type: ignore[arg-type]
    assert removed == [] and report["closed_records"] == [] and report["placements"] == []
    assert "post-copy" in report["left_alone"][0][1]


def test_the_migration_lease_is_held_for_the_migration_and_released(records):
    with migration_lease(records, "vm", "fog1", "fog2") as owner:
        [lease] = records.leases()
        assert (lease["pid"], lease["pid_started"]) == owner and owner_alive(*owner)
    assert records.leases() == []
