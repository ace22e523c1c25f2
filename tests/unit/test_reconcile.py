from orchestrator.edge.reconcile import Observed, plan_repairs


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
