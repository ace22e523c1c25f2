"""The replay's actions: carried out by worker threads through the live control plane's
code, and reported per trace minute.

Why workers: a decomposition boots a VM and a migration copies one for seconds — several
trace minutes when time is compressed — so the replay loop hands each action to its user's
queue (a user's actions keep their order) and goes on with the trace. What does the work
is what serves live location updates: `ReplicaService` for the replay's proxies (they have
replica disks), `edge.control.FleetApplier` — hence `edge.handover` — for decomposition,
composition, reassignment and a mobile part's migration.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.edge.control import FleetApplier
from orchestrator.edge.replicas import ReplicaService
from orchestrator.errors import OrchestratorError
from orchestrator.fog.session import FleetSession
from orchestrator.model.controller import Action
from orchestrator.store import Store, open_store

LATER = ("migrate", "decompose", "compose", "reassign")  # run in the users' worker threads
HANDOVERS = ("decompose", "compose", "reassign")
SUCCEEDED = ("completed", "decomposed", "composed", "reassigned", "nothing to do")
RULE = ("t_mig_s", "threshold_s", "dwell_s", "r_data_bps", "r_mig_bps", "epsilon_bytes",
        "saved_bytes", "memory_bytes", "extra_bytes", "replica", "reason")
OUTCOME = ("status", "error", "reason", "vm", "destroyed", "boot_s", "total_s", "storage",
           "transferred_bytes", "disk_bytes_sent", "id", "migration_id")


def decision_row(minute: int, event: Mapping[str, Any]) -> dict[str, Any]:
    """One logged decision as the replay's result shows it: who, when (trace minute), what,
    where (`node`: where the proxy goes or would go, the mobile part boots, or the parts
    become one), Eq. 1's figures when the rule was asked, and the outcome so far."""
    row = {"minute": minute, "user": event["user"], "verdict": event["verdict"],
           "node": event["destination"], "from": event["source"], "proxy": event["proxy"],
           "into": event["into"], "devices": list(event["devices"])}
    row.update({k: event[k] for k in RULE if k in event})
    result = event.get("result") or {}
    row["status"] = result.get("status")
    if "job" in result:
        row["job"] = result["job"]
    return row


def with_outcomes(rows: list[dict[str, Any]],
                  outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose action ran later get that run's outcome (status and a few figures)."""
    out = []
    for row in rows:
        row = dict(row)
        job = row.pop("job", None)
        if job is not None:
            outcome = outcomes[job]
            row["outcome"] = {k: outcome[k] for k in OUTCOME if outcome.get(k) is not None}
            row["status"] = outcome.get("status")
        out.append(row)
    return out


def succeeded(result: Mapping[str, Any]) -> bool:
    return result.get("status") in SUCCEEDED


@dataclass
class ReplayApplier:
    """Actions carried out in worker threads, one queue per user (a user's actions keep
    their order; the trace goes on meanwhile). Migrations of the replay's proxies (they
    have replica disks) go through `ReplicaService`; decomposition, composition,
    reassignment and a mobile part's migration through the live control plane's
    `FleetApplier` — the same handover code. Handovers take turns across users: they
    rewrite the one directory file and hand out VM addresses from the records.

    An action planned before an earlier one of its user failed (the engine has since
    rolled back: `epoch`, the plane's failure count) is skipped, as `ControlPlane` skips
    the rest of an update after a failure."""

    session: FleetSession
    state_dir: Path
    use_replicas: bool
    size_bytes: int
    disk_vms: frozenset[str] = frozenset()
    boot_wait_s: float = 90.0
    epoch: Callable[[str], int] = field(default=lambda _user: 0)
    on_done: Callable[[Action, dict[str, Any]], None] | None = None
    queues: dict[str, ThreadPoolExecutor] = field(default_factory=dict)
    jobs: list[tuple[Action, Future[dict[str, Any]]]] = field(default_factory=list)
    _handovers: threading.Lock = field(default_factory=threading.Lock)

    def apply(self, action: Action) -> dict[str, Any]:
        if action.kind not in LATER:
            return {"status": "placed" if action.kind == "place" else "nothing to do"}
        queue = self.queues.get(action.user)
        if queue is None:
            queue = self.queues[action.user] = ThreadPoolExecutor(
                1, thread_name_prefix=f"replay-{action.user}")
        job = queue.submit(self._job, action, self.epoch(action.user))
        self.jobs.append((action, job))
        return {"status": "submitted", "job": len(self.jobs) - 1}

    def _job(self, action: Action, planned: int) -> dict[str, Any]:
        if self.epoch(action.user) != planned:
            return {"status": "skipped", "reason": "an earlier action of this user failed"}
        store = open_store(self.state_dir)
        try:
            result = self._apply(action, store)
        except OrchestratorError as exc:
            result = {"status": "failed", "error": str(exc)}
        finally:
            store.close()
        if self.on_done:
            self.on_done(action, result)
        return result

    def _apply(self, action: Action, store: Store) -> dict[str, Any]:
        if action.kind == "migrate" and action.proxy in self.disk_vms:
            assert action.destination is not None
            return ReplicaService(self.session, store, self.state_dir, self.size_bytes).migrate(
                action.proxy, action.destination, action.user, self.use_replicas)
        fleet = FleetApplier(self.session, store, self.state_dir, self.boot_wait_s)
        if action.kind not in HANDOVERS:
            return fleet.apply(action)
        with self._handovers:
            return fleet.apply(action)

    def wait(self) -> list[tuple[Action, dict[str, Any]]]:
        """Every action's outcome so far, in the order they were decided."""
        return [(action, job.result()) for action, job in self.jobs]

    def close(self, cancel: bool = False) -> None:
        """Let the workers finish (`cancel`: drop what has not started) and end them."""
        for queue in self.queues.values():
            queue.shutdown(wait=True, cancel_futures=cancel)
