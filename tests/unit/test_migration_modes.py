"""Post-copy, auto-converge, the user's cancel, node admission and stale VM records (issue 18),
without a hypervisor: scripted job stats, an injected clock, libvirt's test driver.
The real runs are tests/integration/test_modes_lab.py and test_concurrency_lab.py."""

from __future__ import annotations

import fcntl
import threading

import libvirt
import pytest

from orchestrator.edge.migrate import inbound_reservation
from orchestrator.errors import ExitStatus, UserError
from orchestrator.fog.jobstats import parse_sample
from orchestrator.fog.migration import (
    MigrationRequest,
    TimeoutAction,
    _final_stats,
    _outcome,
    migration_params,
    watch,
)

MiB = 2**20


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def running(processed: int, **extra: int) -> dict[str, int]:
    return {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "memory_iteration": 1,
            "data_remaining": 100 * MiB, "data_processed": processed, **extra}


# --- post-copy and auto-converge parameters and samples ---------------------------------------


def test_postcopy_is_capped_like_precopy():
    params = migration_params(MigrationRequest("vm", "fog2", bandwidth_mib_s=6, postcopy=True))
    assert params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] == 6
    assert params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY] == 6


@pytest.mark.parametrize("request_", [MigrationRequest("vm", "fog2", bandwidth_mib_s=6),
                                      MigrationRequest("vm", "fog2", postcopy=True)])
def test_no_postcopy_cap_without_postcopy_or_without_a_cap(request_):
    assert libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY not in migration_params(request_)


def test_samples_keep_the_throttle_and_the_postcopy_requests():
    throttled = parse_sample(running(MiB, auto_converge_throttle=40), 1.0)
    assert throttled is not None and throttled.throttle_pct == 40
    assert throttled.as_dict()["throttle_pct"] == 40  # what the record stores
    postcopy = parse_sample(running(MiB, memory_postcopy_requests=363), 1.0)
    assert postcopy is not None and postcopy.postcopy_requests == 363
    plain = parse_sample(running(MiB), 1.0)  # libvirt omits the throttle when there is none
    assert plain is not None and plain.throttle_pct == 0 and plain.postcopy_requests == 0


class Destination:
    """A destination hypervisor whose arrived domain has the given completed stats."""

    def __init__(self, completed: dict) -> None:
        self.completed = completed

    def lookup(self, _vm: str) -> Destination:
        return self

    def job_stats(self, completed: bool = False) -> dict:
        assert completed
        return self.completed


SOURCE_EVENT = {"time_elapsed": 24158, "downtime": 41, "setup_time": 1,
                "data_processed": 149050948, "memory_total": 202121216,
                "memory_iteration": 2, "memory_normal_bytes": 148639744}


def test_after_postcopy_the_figures_come_from_the_sources_completed_event():
    arrived = threading.Event()
    arrived.set()
    final = _final_stats(Destination({"type": 0}), "vm", [],  # type: ignore[arg-type]
                         {**SOURCE_EVENT, "_arrived": arrived})
    assert final is not None
    assert (final.total_time_ms, final.downtime_ms, final.iterations,
            final.transferred_bytes) == (24158, 41, 2, 149050948)


def test_the_destinations_figures_win_when_it_has_them():
    own = {**SOURCE_EVENT, "time_elapsed": 3000, "downtime": 30}
    final = _final_stats(Destination(own), "vm", [], {"time_elapsed": 1})  # type: ignore[arg-type]
    assert final is not None and (final.total_time_ms, final.downtime_ms) == (3000, 30)


def test_no_figures_at_all_is_none_rather_than_zeros():
    assert _final_stats(Destination({"type": 0}), "vm", [], {}) is None  # type: ignore[arg-type]


# --- the user's cancel ------------------------------------------------------------------------


def scripted(n: int) -> tuple:
    stats = [running(k * MiB) for k in range(n)]
    return (lambda: stats.pop(0)), (lambda: not stats)


def test_cancel_aborts_on_every_sample_until_the_call_returns():
    clock, acted = FakeClock(), []
    stats, finished = scripted(6)
    seen = watch(stats, finished, acted.append, timeout_s=None, postcopy=False, clock=clock,
                 sleep=clock.sleep, cancel_requested=lambda: clock.now >= 0.6)
    assert seen.cancelled and seen.acted_at_s == pytest.approx(0.6)
    assert seen.action is TimeoutAction.ABORT
    assert acted == [TimeoutAction.ABORT] * 3  # at 0.6, 0.8 and 1.0 s: the job ran on


def test_a_refused_cancel_is_recorded_not_raised():
    from orchestrator.errors import OrchestratorError

    def refuse(_action: TimeoutAction) -> None:
        raise OrchestratorError("cannot abort migration in post-copy mode")
    clock = FakeClock()
    stats, finished = scripted(3)
    seen = watch(stats, finished, refuse, timeout_s=None, postcopy=True, clock=clock,
                 sleep=clock.sleep, cancel_requested=lambda: True)
    assert seen.cancelled and "post-copy" in (seen.action_error or "")


def outcome_of(cancelled: bool, failure: list, never_started: bool = False):
    clock = FakeClock()
    stats, finished = scripted(2)
    seen = watch(stats, finished, lambda a: None, timeout_s=None, postcopy=False, clock=clock,
                 sleep=clock.sleep, cancel_requested=lambda: cancelled)
    return _outcome(seen, failure, None, 1.0, never_started)


def test_a_cancelled_migration_is_recorded_as_cancelled():
    out = outcome_of(True, [RuntimeError("operation aborted: migration out job: canceled")])
    assert out.status == "cancelled" and "cancelled by the user" in (out.error or "")
    assert outcome_of(True, [], never_started=True).status == "cancelled"


def test_a_cancel_too_late_leaves_a_completed_migration_completed():
    out = outcome_of(True, [])
    assert out.status == "completed" and "too late" in (out.error or "")
    assert outcome_of(False, [RuntimeError("x")]).status == "failed"


# --- admission: two migrations into a node with room for one ----------------------------------


def test_a_reservation_is_seen_by_the_next_admission_and_lapses_with_its_holder(tmp_path):
    seen: list[dict[str, int]] = []
    with inbound_reservation(tmp_path, "fog3", "a", 128 * MiB, seen.append):
        with pytest.raises(UserError):
            def full(reserved: dict[str, int]) -> None:
                seen.append(reserved)
                raise UserError("no room")
            with inbound_reservation(tmp_path, "fog3", "b", 128 * MiB, full):
                pass
        with inbound_reservation(tmp_path, "fog2", "c", MiB, seen.append):
            pass  # another node's admission sees none of fog3's promises
    assert seen == [{}, {"a": 128 * MiB}, {}]
    # a process that died holding a reservation: the file stays, its flock is gone
    (tmp_path / "locks" / "inbound-fog3-ghost.json").write_text(str(64 * MiB))
    with inbound_reservation(tmp_path, "fog3", "d", MiB, seen.append):
        pass
    assert seen[-1] == {}
    assert not (tmp_path / "locks" / "inbound-fog3-ghost.json").exists()


def test_admission_is_serialised_per_node(tmp_path):
    """While one admission decides, another into the same node waits for it."""
    (tmp_path / "locks").mkdir()
    gate = open(tmp_path / "locks" / "admit-fog3.lock", "w")
    fcntl.flock(gate, fcntl.LOCK_EX)
    admitted = threading.Event()

    def second() -> None:
        with inbound_reservation(tmp_path, "fog3", "b", MiB, lambda r: None):
            admitted.set()
    worker = threading.Thread(target=second)
    worker.start()
    assert not admitted.wait(0.3)
    gate.close()
    assert admitted.wait(5)
    worker.join()


# --- a VM that died with the lab ---------------------------------------------------------------


@pytest.fixture
def test_node(tmp_path, isolated_state):
    keeper = libvirt.open("test:///default")
    path = tmp_path / "hosts.ini"
    path.write_text("[fog_nodes]\nfogm libvirt_uri=test:///default domain_type=qemu "
                    "image_dir=/srv/img memory_mib=10240\n")
    yield str(path), keeper
    for dom in keeper.listAllDomains():
        if dom.name().startswith("stale-"):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    keeper.close()


def test_a_recorded_vm_that_runs_nowhere_does_not_block_its_name(cli, test_node):
    inventory, keeper = test_node
    args = ("vm", "create", "stale-a", "--node", "fogm", "--memory", "128", "--wait", "0",
            "--inventory", inventory)
    assert cli(*args).status == ExitStatus.SUCCESS
    assert cli(*args).status == ExitStatus.BAD_INPUT  # it runs: the name is taken
    dom = keeper.lookupByName("stale-a")  # the lab went down and took the domain along
    dom.destroy()
    dom.undefine()
    again = cli(*args)
    assert again.status == ExitStatus.SUCCESS, again.err
    assert keeper.lookupByName("stale-a").isActive()
