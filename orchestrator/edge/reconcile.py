"""Bring records and hypervisors back into agreement after a crash.

The orchestrator can die mid-migration (killed, host reboot). libvirt's peer-to-peer
migration then goes on without anyone watching, or leaves a paused incoming domain behind.
`reconcile` looks at where every managed VM really runs, ends orphaned migration jobs,
removes leftover (inactive) domains on other nodes, and closes every record still marked
"running" whose process is gone, saying what was found. The decisions are a pure function
of what was observed (`plan_repairs`); `Reconciler` observes and carries them out.

What it never touches (issue 13): reconcile also runs before every `migrate`, beside other
orchestrator processes, so
  * a VM whose migration another live process owns — a lease in the records naming a
    process by pid *and start time* (a reused pid is no owner) — is left alone, and so is
    a VM with a libvirt job that no orphaned record explains (libvirt's own job state);
  * a VM with a copy in post-copy (source paused for post-copy, destination running in
    post-copy, or either failed in post-copy) is left alone whatever else is seen: the
    paused source holds pages the running destination still needs, so removing it would
    lose the guest. Only libvirt ends a post-copy migration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psutil

from orchestrator.errors import OrchestratorError
from orchestrator.fog.session import FleetSession
from orchestrator.store import Store

# NOTE: libvirt's virDomainState / reason enums (stable ABI values), so this module needs no
# libvirt import: running/paused, and the post-copy reasons of each.
RUNNING, PAUSED = 1, 3
RUNNING_POSTCOPY_REASONS = frozenset({10, 11})  # RUNNING_POSTCOPY, RUNNING_POSTCOPY_FAILED
PAUSED_POSTCOPY_REASONS = frozenset({12, 13})  # PAUSED_POSTCOPY, PAUSED_POSTCOPY_FAILED
START_TIME_TOLERANCE_S = 0.5

Owner = tuple[int, float]
"""A process: (pid, its start time as psutil reports it)."""


def this_process() -> Owner:
    proc = psutil.Process()
    return proc.pid, proc.create_time()


def owner_alive(pid: int | None, started: float | None) -> bool:
    """The process still runs and is the same one (not a later process with its pid)."""
    if not pid:
        return False
    try:
        created = psutil.Process(int(pid)).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False
    return started is None or abs(created - float(started)) < START_TIME_TOLERANCE_S


def pid_alive(pid: int | None) -> bool:
    return bool(pid) and psutil.pid_exists(int(pid or 0))


@contextmanager
def migration_lease(store: Store, vm: str, source: str | None = None,
                    destination: str | None = None) -> Iterator[Owner]:
    """Hold the VM's lease while this process migrates it; reconcile (any process) then
    leaves the VM alone. A lease whose process died is void by itself."""
    owner = this_process()
    store.take_lease(vm, owner, source, destination)
    try:
        yield owner
    finally:
        store.release_lease(vm, owner)


@dataclass(frozen=True)
class Observed:
    """One VM as the hypervisors show it."""

    vm: str
    running: tuple[str, ...]  # nodes where the domain runs (active and not paused)
    leftovers: tuple[str, ...]  # nodes where it is defined, or paused, but not running
    jobs: tuple[str, ...] = ()  # nodes where a libvirt job is still active
    postcopy: tuple[str, ...] = ()  # nodes where a copy is in (or failed in) post-copy
    owner: int | None = None  # pid of a live process holding the VM's migration lease


@dataclass
class Repairs:
    abort_jobs: list[tuple[str, str]] = field(default_factory=list)  # (vm, node)
    remove_leftovers: list[tuple[str, str]] = field(default_factory=list)
    close_records: list[tuple[int, str, str]] = field(default_factory=list)  # (id, status, why)
    set_placement: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    left_alone: list[tuple[str, str]] = field(default_factory=list)  # (vm, why)


def untouchable(seen: Observed, orphaned: bool) -> str | None:
    """Why reconcile must not touch this VM at all, or None."""
    if seen.owner is not None:
        return f"its migration is owned by live process {seen.owner}"
    if seen.postcopy:
        return (f"in post-copy on {', '.join(seen.postcopy)}: the paused source holds pages "
                "the destination still needs; libvirt ends it")
    if seen.jobs and not orphaned:
        return f"a libvirt job runs on {', '.join(seen.jobs)} that no dead process left"
    return None


def plan_repairs(orphans: list[dict[str, Any]], observed: dict[str, Observed],
                 recorded_nodes: dict[str, str]) -> Repairs:
    """What to do, from orphaned migration records and the observed placements."""
    repairs = Repairs()
    orphan_vms = {r["vm"] for r in orphans}
    for vm, seen in sorted(observed.items()):
        why = untouchable(seen, vm in orphan_vms)
        if why:
            repairs.left_alone.append((vm, why))
            continue
        repairs.abort_jobs += [(vm, node) for node in seen.jobs]
        if len(seen.running) == 1:
            node = seen.running[0]
            repairs.remove_leftovers += [(vm, n) for n in seen.leftovers if n != node]
            if recorded_nodes.get(vm) != node:
                repairs.set_placement.append((vm, node))
        elif len(seen.running) > 1:
            repairs.problems.append(f"{vm} runs on {', '.join(seen.running)}: "
                                    "left alone, decide which copy to keep")
        elif vm in recorded_nodes:
            repairs.problems.append(f"{vm} runs on no node")
    alone = {vm for vm, _ in repairs.left_alone}
    for record in orphans:
        if record["vm"] in alone:
            continue  # judged once its migration has really ended
        found = observed.get(record["vm"])
        where = found.running if found else ()
        if where == (record["destination"],):
            status, why = "completed", "orchestrator died; the VM arrived at the destination"
        elif where == (record["source"],):
            status, why = "failed", "orchestrator died; the VM stayed on the source"
        else:
            status, why = "failed", f"orchestrator died; the VM runs on {list(where) or 'no node'}"
        repairs.close_records.append((record["id"], status, why))
    return repairs


@dataclass
class Reconciler:
    session: FleetSession
    store: Store
    alive: Callable[[int | None], bool] = pid_alive
    owner_alive: Callable[[int | None, float | None], bool] = owner_alive

    def observe(self, names: list[str]) -> dict[str, Observed]:
        owners = self.live_owners()
        found: dict[str, Observed] = {}
        for name in names:
            guests = self.session.locate(name)
            found[name] = Observed(
                vm=name, running=tuple(g.node for g in guests if g.is_running()),
                leftovers=tuple(g.node for g in guests if not g.is_running()),
                jobs=tuple(g.node for g in guests if g.is_active() and _has_job(g.job_stats)),
                postcopy=tuple(g.node for g in guests if _in_postcopy(g)),
                owner=owners.get(name))
        return found

    def live_owners(self) -> dict[str, int]:
        """vm → pid of the live process whose lease says it migrates that VM."""
        return {lease["vm"]: int(lease["pid"]) for lease in self.store.leases()
                if self.owner_alive(lease["pid"], lease["pid_started"])}

    def orphans(self) -> list[dict[str, Any]]:
        """Records still 'running' whose process is gone (by its lease when it has one)."""
        leased = {lease["vm"]: lease for lease in self.store.leases()}
        out = []
        for record in self.store.migrations(status="running"):
            lease = leased.get(record["vm"])
            if lease is not None and lease["pid"] == record["pid"]:
                gone = not self.owner_alive(lease["pid"], lease["pid_started"])
            else:
                gone = not self.alive(record["pid"])
            if gone:
                out.append(record)
        return out

    def run(self, dry_run: bool = False) -> dict[str, Any]:
        orphans = self.orphans()
        names = sorted({v.name for v in self.store.vms()} | {r["vm"] for r in orphans})
        plan = self._plan(orphans, names, with_jobs=True)
        if not dry_run and plan.abort_jobs:
            self._abort(plan.abort_jobs)
            # An ended job may have moved the VM or left a paused domain: look again.
            aborted, plan = plan.abort_jobs, self._plan(orphans, names, with_jobs=False)
            plan.abort_jobs = aborted
        if not dry_run:
            self._apply(plan)
        return {"dry_run": dry_run, "aborted_jobs": plan.abort_jobs,
                "removed_leftovers": plan.remove_leftovers, "closed_records": plan.close_records,
                "placements": plan.set_placement, "problems": plan.problems,
                "left_alone": plan.left_alone}

    def _plan(self, orphans: list[dict[str, Any]], names: list[str], with_jobs: bool) -> Repairs:
        """After aborting (`with_jobs` False) the aborted VMs' jobs are known to be ending:
        they are planned as if no job ran; every other VM keeps its observed job."""
        orphan_vms = {r["vm"] for r in orphans}
        observed = self.observe(names)
        if not with_jobs:
            observed = {k: (Observed(v.vm, v.running, v.leftovers, (), v.postcopy, v.owner)
                            if k in orphan_vms else v) for k, v in observed.items()}
        return plan_repairs(orphans, observed, {v.name: v.node for v in self.store.vms()})

    def _abort(self, jobs: list[tuple[str, str]]) -> None:
        for vm, node in jobs:
            guest = self.session.hypervisor(node).lookup(vm)
            if guest is not None:
                guest.abort_job()

    def _apply(self, plan: Repairs) -> None:
        for vm, node in plan.remove_leftovers:
            guest = self.session.hypervisor(node).lookup(vm)
            # Looked at again right before: a copy that started running or entered
            # post-copy meanwhile is no leftover.
            if guest is not None and not guest.is_running() and not _in_postcopy(guest):
                guest.remove()
        for record_id, status, why in plan.close_records:
            self.store.finish_migration(record_id, status, {"reconciled": True}, [], why)
        for vm, node in plan.set_placement:
            self.store.set_vm_node(vm, node)


def _has_job(job_stats: Callable[[], dict[str, Any]]) -> bool:
    try:
        return int(job_stats().get("type", 0) or 0) != 0
    except OrchestratorError:  # a domain that vanished has no job
        return False


def _in_postcopy(guest: Any) -> bool:
    """libvirt's state reason says this copy is in (or failed in) post-copy."""
    try:
        state, reason = guest.dom.state()
    except Exception:  # noqa: BLE001 - a vanished domain is in no post-copy
        return False
    return ((state == PAUSED and reason in PAUSED_POSTCOPY_REASONS)
            or (state == RUNNING and reason in RUNNING_POSTCOPY_REASONS))
