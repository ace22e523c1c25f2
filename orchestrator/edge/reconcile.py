"""Bring records and hypervisors back into agreement after a crash.

The orchestrator can die mid-migration (killed, host reboot). libvirt's peer-to-peer
migration then goes on without anyone watching, or leaves a paused incoming domain behind.
`reconcile` looks at where every managed VM really runs, ends orphaned migration jobs,
removes leftover (inactive) domains on other nodes, and closes every record still marked
"running" whose process is gone, saying what was found. The decisions are a pure function
of what was observed (`plan_repairs`); `Reconciler` observes and carries them out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from orchestrator.errors import OrchestratorError
from orchestrator.fog.session import FleetSession
from orchestrator.store import Store


@dataclass(frozen=True)
class Observed:
    """One VM as the hypervisors show it."""

    vm: str
    running: tuple[str, ...]  # nodes where the domain runs (active and not paused)
    leftovers: tuple[str, ...]  # nodes where it is defined, or paused, but not running
    jobs: tuple[str, ...] = ()  # nodes where a migration job is still active


@dataclass
class Repairs:
    abort_jobs: list[tuple[str, str]] = field(default_factory=list)  # (vm, node)
    remove_leftovers: list[tuple[str, str]] = field(default_factory=list)
    close_records: list[tuple[int, str, str]] = field(default_factory=list)  # (id, status, why)
    set_placement: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def plan_repairs(orphans: list[dict[str, Any]], observed: dict[str, Observed],
                 recorded_nodes: dict[str, str]) -> Repairs:
    """What to do, from orphaned migration records and the observed placements."""
    repairs = Repairs()
    for vm, seen in sorted(observed.items()):
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
    for record in orphans:
        seen = observed.get(record["vm"])
        where = seen.running if seen else ()
        if where == (record["destination"],):
            status, why = "completed", "orchestrator died; the VM arrived at the destination"
        elif where == (record["source"],):
            status, why = "failed", "orchestrator died; the VM stayed on the source"
        else:
            status, why = "failed", f"orchestrator died; the VM runs on {list(where) or 'no node'}"
        repairs.close_records.append((record["id"], status, why))
    return repairs


def pid_alive(pid: int | None) -> bool:
    return bool(pid) and psutil.pid_exists(int(pid or 0))


@dataclass
class Reconciler:
    session: FleetSession
    store: Store
    alive: Callable[[int | None], bool] = pid_alive

    def observe(self, names: list[str]) -> dict[str, Observed]:
        found: dict[str, Observed] = {}
        for name in names:
            guests = self.session.locate(name)
            found[name] = Observed(
                vm=name, running=tuple(g.node for g in guests if g.is_running()),
                leftovers=tuple(g.node for g in guests if not g.is_running()),
                jobs=tuple(g.node for g in guests if g.is_active() and _has_job(g.job_stats)))
        return found

    def orphans(self) -> list[dict[str, Any]]:
        return [r for r in self.store.migrations(status="running") if not self.alive(r["pid"])]

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
                "placements": plan.set_placement, "problems": plan.problems}

    def _plan(self, orphans: list[dict[str, Any]], names: list[str], with_jobs: bool) -> Repairs:
        # NOTE: only jobs of orphaned migrations are aborted; a live orchestrator's own job
        # is still watched by it.
        orphan_vms = {r["vm"] for r in orphans} if with_jobs else set()
        observed = {k: v if k in orphan_vms else Observed(v.vm, v.running, v.leftovers)
                    for k, v in self.observe(names).items()}
        return plan_repairs(orphans, observed, {v.name: v.node for v in self.store.vms()})

    def _abort(self, jobs: list[tuple[str, str]]) -> None:
        for vm, node in jobs:
            guest = self.session.hypervisor(node).lookup(vm)
            if guest is not None:
                guest.abort_job()

    def _apply(self, plan: Repairs) -> None:
        for vm, node in plan.remove_leftovers:
            guest = self.session.hypervisor(node).lookup(vm)
            if guest is not None and not guest.is_running():
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
