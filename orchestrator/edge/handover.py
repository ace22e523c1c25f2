"""Handing devices over between proxy VMs without losing or repeating a record.

Why this order: exactly-once lives in each proxy's per-device `next` (and the hash chain of
what it accepted), so a device may only ever be accepted by the proxy holding its current
state. A handover (decomposition, composition, reassignment) therefore moves that state,
never copies it:

1. the target learns the devices' profiles and credentials (snapshots carry no keys),
   `held`: it knows them but accepts nothing and answers `moved` (the device retries
   shortly);
2. the target gets the user's models that read the devices' data types;
3. the directory names the target for these devices (devices still connected to the
   source keep streaming there: nothing reads the directory until a reconnect);
4. the source releases them: in one critical section it stops accepting them and returns
   each one's snapshot (`next`, `chain`, counters), then disconnects them — the devices
   re-resolve and reach the target;
5. the target adopts the snapshots and accepts from `next` on — sequence numbers continue;
6. the handover is recorded (store event "handover"), which is what the directory and the
   control plane read from then on.

Between 4 and 5 no proxy accepts these devices; before 4 only the source, after 5 only the
target. A failure before 4 restores the directory (the held entries on the target are
inert). A failure at 5 gives the devices back to the source: the target releases them too
(it may have adopted them and only its reply was lost) and the source adopts, per device,
whichever snapshot is further along — so it serves them again from where they stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.edge.apps import AppService
from orchestrator.edge.devices import DeviceRegistry
from orchestrator.edge.proxies import HANDOVER_EVENT, ProxyService
from orchestrator.errors import OrchestratorError, UserError
from orchestrator.fog.session import FleetSession
from orchestrator.store import Store

PROGRESS = ("next", "accepted", "chain")


def check_released(asked: Iterable[str], released: Any) -> list[dict[str, Any]]:
    """The source's snapshots, one per device asked for (a proxy that answers otherwise
    is not trusted with the handover)."""
    wanted = sorted(asked)
    if not isinstance(released, list) or not all(isinstance(s, dict) for s in released):
        raise OrchestratorError("device_release: expected a list of snapshots")
    got = sorted(str(s.get("id")) for s in released)
    if got != wanted:
        raise OrchestratorError(f"device_release returned {got}, asked for {wanted}")
    return released


def newest(*sets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per device the snapshot that is further along (a stream's `next` only grows)."""
    best: dict[str, dict[str, Any]] = {}
    for snapshots in sets:
        for snap in snapshots:
            if snap["id"] not in best or snap["next"] > best[snap["id"]]["next"]:
                best[snap["id"]] = snap
    return [best[d] for d in sorted(best)]


def progress(snapshots: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per device what the record keeps: where its stream stood when it changed proxy."""
    return {s["id"]: {k: s[k] for k in PROGRESS} for s in snapshots}


@dataclass
class HandoverService:
    session: FleetSession
    store: Store
    state_dir: Path
    clock: Callable[[], float] = field(default=time.monotonic)

    def proxies(self) -> ProxyService:
        return ProxyService(self.session, self.store, self.state_dir)

    def move(self, user: str, devices: Iterable[str], source: str,
             target: str) -> dict[str, Any]:
        """Hand `devices` (of `user`) over from proxy VM `source` to `target`; returns the
        record written (timings in seconds, each device's progress at the switch)."""
        known = {d["id"]: d for d in self.store.devices(user)}
        devs = sorted(set(devices))
        unknown = [d for d in devs if d not in known]
        if unknown:
            raise UserError(f"not devices of {user}: {', '.join(unknown)}")
        target_vm = self.store.vm(target)
        if not devs or source == target or target_vm is None:
            raise UserError(f"nothing to hand over from {source} to {target}")
        proxies = self.proxies()
        src, dst = proxies.agent(source), proxies.agent(target)
        t0 = self.clock()
        dst.request("device_register", held=True,
                    devices=DeviceRegistry(self.store).registrations(known[d] for d in devs))
        models = AppService(self.session, self.store, self.state_dir).copy_models(
            source, target, target_vm.node, {known[d]["type"] for d in devs})
        proxies.write_directory(pending=dict.fromkeys(devs, target))
        t1 = self.clock()
        try:
            snapshots = check_released(devs, src.request("device_release", devices=devs)
                                       ["released"])
        except OrchestratorError:
            proxies.write_directory()
            raise
        t2 = self.clock()
        try:
            dst.request("device_adopt", devices=snapshots)
        except OrchestratorError as exc:
            self._give_back(source, target, devs, snapshots)
            raise OrchestratorError(f"handover {source} → {target} failed: {exc}; "
                                    f"the devices stay with {source}") from None
        t3 = self.clock()
        record = {"from": source, "to": target, "to_uuid": target_vm.uuid, "devices": devs,
                  "models": models, "progress": progress(snapshots),
                  "prepare_s": round(t1 - t0, 4), "release_s": round(t2 - t1, 4),
                  "adopt_s": round(t3 - t2, 4), "paused_s": round(t3 - t1, 4)}
        self.store.add_event(HANDOVER_EVENT, user, record)
        proxies.write_directory()
        return record

    def _give_back(self, source: str, target: str, devs: list[str],
                   snapshots: list[dict[str, Any]]) -> None:
        proxies = self.proxies()
        try:
            theirs = check_released(devs, proxies.agent(target).request(
                "device_release", devices=devs)["released"])
        except OrchestratorError as exc:
            raise OrchestratorError(f"handover {source} → {target} failed and {target} does "
                                    f"not answer ({exc}): the devices wait until it does"
                                    ) from None
        try:
            proxies.agent(source).request("device_adopt", devices=newest(snapshots, theirs))
        finally:
            proxies.write_directory()
