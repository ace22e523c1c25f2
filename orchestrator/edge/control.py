"""The control plane's adapter: location updates → MME → decision engine → real actions.

Why an adapter around a pure engine: `model.controller` decides, this module does —
through `VmService`, `MigrationService` and issue 3's `ProxyService` — and logs every
decision as a store event (kind "decision", with the inputs, the threshold and the
verdict, which `orchestrator decisions` and the Prometheus exporter read). An `Applier`
is whatever turns actions into side effects: the fleet one here, the scenario replay's
own (VMs with replica disks, storage migrations), or a recorder in tests.

Decomposition, composition and reassignment move devices between a user's proxy VMs
through `edge.handover` (stream state moved, never copied: no record lost or repeated);
a decomposition first boots the mobile proxy, a composition destroys the proxy that is no
longer needed once it serves nothing. When an action fails, the engine's view of that user
is re-read from the records (what really runs and serves whom).

Location updates arrive from the CLI (`orchestrator locate`) or from the SDN controller's
relay (the MME's network function) over a line-JSON TCP endpoint (`LocationServer`) that
only listens on loopback or on the lab's gateway address and accepts only updates signed
with the lab's relay key.
"""

from __future__ import annotations

import ipaddress
import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent.host.bounded import BoundedServer, Limits, LineFraming, Respond
from orchestrator.edge.proxies import HANDOVER_EVENT, assignments, elsewhere
from orchestrator.errors import OrchestratorError, UserError
from orchestrator.fog.migration import MigrationRequest
from orchestrator.fog.session import FleetSession
from orchestrator.lab.controller.api import RelayAuth, check_update
from orchestrator.model.controller import (
    Action,
    ConstantDwell,
    Controller,
    ControlParams,
    DwellEstimator,
    Proxy,
    TmigCache,
)
from orchestrator.model.mme import BaseStation, LocationUpdate, Mme, MmeError
from orchestrator.model.precopy import Calibration
from orchestrator.store import Store


class Applier(Protocol):
    """Turns one action into side effects; returns what happened (for the log)."""

    def apply(self, action: Action) -> dict[str, Any]: ...


def mme_from_store(store: Store) -> Mme:
    """Base stations and device ownership as recorded; last known locations replayed."""
    mme = Mme()
    for bs in store.base_stations():
        mme.add_bs(BaseStation(bs["bs_id"], bs["node"], tuple(bs["alternates"])))
    for device in store.devices():
        mme.register(device["id"], device["user"])
    for loc in store.locations():
        if loc["bs_id"] in mme.stations and loc["device"] in mme.owners:
            mme.update(LocationUpdate(loc["device"], loc["bs_id"], loc["at"]))
    return mme


def register_new(mme: Mme, store: Store) -> None:
    """Base stations and devices recorded since `mme` was built, added to it."""
    for bs in store.base_stations():
        if bs["bs_id"] not in mme.stations:
            mme.add_bs(BaseStation(bs["bs_id"], bs["node"], tuple(bs["alternates"])))
    for device in store.devices():
        if device["id"] not in mme.owners:
            mme.register(device["id"], device["user"])


def log_decision(store: Store, action: Action, result: dict[str, Any] | None = None) -> None:
    store.add_event("decision", action.user, {**action.as_event(), "result": result or {}})


@dataclass
class FleetApplier:
    """Actions on the real fleet through the existing services."""

    session: FleetSession
    store: Store
    state_dir: Path
    boot_wait_s: float = 30.0  # a mobile proxy's boot (the replay's TCG guests boot under load)

    def apply(self, action: Action) -> dict[str, Any]:
        handler: Callable[[Action], dict[str, Any]] = {
            "place": self._place, "migrate": self._migrate, "decompose": self._decompose,
            "compose": self._compose, "reassign": self._reassign,
        }.get(action.kind, lambda _a: {"status": "nothing to do"})
        return handler(action)

    def _proxies(self) -> Any:
        from orchestrator.edge.proxies import ProxyService  # issue 3's module
        return ProxyService(self.session, self.store, self.state_dir)

    def _place(self, action: Action) -> dict[str, Any]:
        assert action.destination is not None
        placed = self._proxies().ensure_placed(action.user, action.destination)
        out: dict[str, Any] = {"status": "placed", "vm": placed.vm}
        if placed.offloaded:
            out.update(node=placed.node, offloaded=True, message=placed.message())
        return out

    def _migrate(self, action: Action) -> dict[str, Any]:
        from orchestrator.edge.migrate import MigrationService
        assert action.destination is not None
        # No --bandwidth: on a metered SDN core the migration caps itself just under the
        # meter (r_mig), elsewhere it runs at line rate. Capped multi-round pre-copy under
        # TCG is safe since guests boot with pti=on (docs/tcg-migration-corruption.md).
        result = MigrationService(self.session, self.store, self.state_dir).migrate(
            MigrationRequest(vm=action.proxy, destination=action.destination))
        return {"status": result["status"], "migration_id": result["id"],
                "transferred_bytes": result.get("transferred_bytes")}

    def _handover(self) -> Any:
        from orchestrator.edge.handover import HandoverService
        return HandoverService(self.session, self.store, self.state_dir)

    def _decompose(self, action: Action) -> dict[str, Any]:
        """Boot the mobile proxy at the destination, then hand the mobile devices to it."""
        from orchestrator.edge.vms import VmService
        assert action.destination is not None and action.into is not None
        vms = VmService(self.session, self.store)
        started = time.monotonic()
        memory_mib = max(int(action.inputs.get("memory_bytes", 0)) >> 20, 128)
        vms.create(action.into, action.destination, memory_mib, role="proxy",
                   wait_s=self.boot_wait_s)
        booted = time.monotonic()
        try:
            moved = self._handover().move(action.user, action.devices, action.proxy,
                                          action.into)
        except OrchestratorError:
            vms.destroy(action.into)
            self.store.remove_app_models(action.into)
            raise
        return {"status": "decomposed", "vm": action.into, "boot_s": round(booted - started, 3),
                "total_s": round(time.monotonic() - started, 3), "handover": moved}

    def _compose(self, action: Action) -> dict[str, Any]:
        """Hand whatever the leaving proxy still serves to the one kept, then destroy it."""
        from orchestrator.edge.vms import VmService
        assert action.into is not None
        started = time.monotonic()
        proxies = self._proxies()
        left = proxies.served_by(action.proxy)
        moved = (self._handover().move(action.user, left, action.proxy, action.into)
                 if left else None)
        for user in proxies.users_of(action.proxy):
            self.store.set_user_proxy(user, action.into)  # the kept one serves them now
        VmService(self.session, self.store).destroy(action.proxy)
        self.store.remove_app_models(action.proxy)
        proxies.write_directory()
        return {"status": "composed", "vm": action.into, "destroyed": action.proxy,
                "total_s": round(time.monotonic() - started, 3), "handover": moved}

    def _reassign(self, action: Action) -> dict[str, Any]:
        assert action.into is not None
        served = set(self._proxies().served_by(action.proxy))
        devices = [d for d in action.devices if d in served]
        if not devices:
            return {"status": "nothing to do", "vm": action.into}
        moved = self._handover().move(action.user, devices, action.proxy, action.into)
        return {"status": "reassigned", "vm": action.into, "handover": moved}


@dataclass
class ControlPlane:
    """One MME and one engine behind a lock; every update is recorded, every action logged."""

    controller: Controller
    applier: Applier
    store: Store | None = None
    clock: Callable[[], float] = time.time
    resync: Callable[[str], list[Proxy] | None] | None = None  # user → proxies as recorded
    failures: dict[str, int] = field(default_factory=dict)  # user → actions failed so far
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, update: LocationUpdate) -> list[dict[str, Any]]:
        with self._lock:
            roams = self._roams(update)
            if self.store is not None:
                for device in (update.device, *update.members):
                    reporter = update.device if device != update.device else None
                    self.store.add_location(device, update.bs_id, update.at_s, reporter)
            out, failed = [], set()
            for action in self.controller.on_roams(roams):
                out.append(self._apply(action, skip=action.user in failed))
                if out[-1]["result"].get("status") == "failed":
                    failed.add(action.user)
            return out

    def _roams(self, update: LocationUpdate) -> Any:
        """The MME's view of the update. A base station or device it does not know may have
        been added since it was built (`locate --serve` runs for hours beside `bs add` and
        `device add`): what the records added since is registered once before the update is
        refused (added only: what the MME learnt stays)."""
        try:
            return self.controller.mme.update(update)
        except MmeError as exc:
            if self.store is None:
                raise UserError(str(exc)) from None
        register_new(self.controller.mme, self.store)
        try:
            return self.controller.mme.update(update)
        except MmeError as exc:
            raise UserError(str(exc)) from None

    def _apply(self, action: Action, skip: bool = False) -> dict[str, Any]:
        """Apply and log one action; `skip`: an earlier action for its user failed, so this
        one (planned on top of it) is only logged."""
        if skip:
            result: dict[str, Any] = {"status": "skipped",
                                      "reason": "an earlier action of this update failed"}
            if self.store is not None:
                log_decision(self.store, action, result)
            return {**action.as_event(), "result": result}
        try:
            result = self.applier.apply(action)
        except OrchestratorError as exc:
            result = {"status": "failed", "error": str(exc)}
        if result.get("status") == "failed":
            self._failed(action)
        if self.store is not None:
            log_decision(self.store, action, result)
        return {**action.as_event(), "result": result}

    def report_failure(self, action: Action) -> None:
        """An action an applier carried out later (in a worker: the scenario replay's)
        failed: the engine learns it as if `apply` had failed."""
        with self._lock:
            self._failed(action)

    def _failed(self, action: Action) -> None:
        """The engine rolls back, then re-reads the user from the records; `failures`
        counts it (an asynchronous applier skips actions planned before it)."""
        self.failures[action.user] = self.failures.get(action.user, 0) + 1
        self.controller.failed(action)
        fresh = self.resync(action.user) if self.resync is not None else None
        if fresh is not None:
            self.controller.proxies[action.user] = fresh


# ----------------------------------------------------------------------------- the API


def check_listen_address(address: str, allowed: set[str]) -> str:
    """Loopback, or an address the caller names as a lab address of this machine."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise UserError(f"invalid listen address {address!r}") from None
    if not ip.is_loopback and address not in allowed:
        raise UserError(f"refusing to listen on {address}: only loopback or the lab gateway")
    return address


MAX_UPDATE_LINE = 16384
LOCATE_LIMITS = Limits(max_connections=32, request_timeout_s=10.0, write_timeout_s=5.0)


def update_from(msg: Any, clock: Callable[[], float]) -> LocationUpdate:
    """A checked update dict ({"device", "bs"[, "members", "at"]}) as the MME takes it."""
    try:
        body = check_update(msg)
    except ValueError as exc:
        raise UserError(f"bad location update: {exc}") from None
    at = body.get("at")
    return LocationUpdate(body["device"], body["bs"], float(clock() if at is None else at),
                          tuple(body.get("members", ())))


def parse_json_line(line: bytes) -> Any:
    """One strict UTF-8 JSON document (no other encodings, no parser-exhausting nesting)."""
    try:
        return json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise UserError("bad location update: not a UTF-8 JSON line") from None


def parse_update(line: bytes, clock: Callable[[], float]) -> LocationUpdate:
    """One unsigned request line: {"device": ID, "bs": BS[, "members": [...], "at": t]}."""
    return update_from(parse_json_line(line), clock)


class LocationServer:
    """`locate --serve`: signed line-JSON location updates, one JSON reply line each.

    Only the controller's relay can send updates (each line is a RelayAuth-signed message;
    anything else gets one error line and the connection is closed). The listener is bounded
    (`agent.host.bounded`). Every accepted update is applied by the thread that runs
    `serve_forever()` — the one that opened the store (SQLite connections belong to their
    thread), and the one place decisions are serialised anyway."""

    def __init__(self, address: tuple[str, int], plane: ControlPlane, auth: RelayAuth,
                 limits: Limits = LOCATE_LIMITS) -> None:
        self.plane, self.auth = plane, auth
        self._work: queue.Queue[Callable[[], None]] = queue.Queue()
        self._stop = threading.Event()
        self.listener = BoundedServer(address, LineFraming(MAX_UPDATE_LINE), self._dispatch,
                                      limits, name="locate-serve").start()
        self.server_address = self.listener.server_address

    def _dispatch(self, line: bytes, respond: Respond) -> None:
        """In the listener's thread: authenticate and check; queue what passes."""
        if not line.strip():
            respond(b"", False)
            return
        try:
            update = update_from(self.auth.verify(parse_json_line(line)), self.plane.clock)
        except (UserError, ValueError) as exc:
            respond(_reply_line({"ok": False, "error": str(exc)}), True)
            return
        self._work.put(lambda: respond(_reply_line(self._apply(update)), False))

    def _apply(self, update: LocationUpdate) -> dict[str, Any]:
        try:
            return {"ok": True, "actions": self.plane.handle(update)}
        except UserError as exc:
            return {"ok": False, "error": str(exc)}

    def serve_forever(self) -> None:
        """Apply updates in this thread until `shutdown()` (the listener runs from
        construction; what arrives before waits in the queue)."""
        while not self._stop.is_set():
            try:
                job = self._work.get(timeout=0.2)
            except queue.Empty:
                continue
            job()

    def shutdown(self) -> None:
        self._stop.set()
        self._work.put(lambda: None)  # wakes serve_forever at once
        self.listener.shutdown()

    def server_close(self) -> None:
        self.shutdown()
        self.listener.server_close()


def _reply_line(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply, default=str).encode() + b"\n"


# ----------------------------------------------------------------------------- wiring


def proxies_from_store(store: Store, memory_bytes: int) -> dict[str, list[Proxy]]:
    """The engine's view of existing proxies: each user's proxy VM where it was last put,
    plus the mobile part serving some of the user's devices (from the recorded handovers),
    if there is one."""
    owners = {d["id"]: d["user"] for d in store.devices()}
    user_proxy = {u["name"]: u["proxy_vm"] for u in store.users()}
    alive = {r.name: r.uuid for r in store.vms()}
    moved = elsewhere(assignments(store.events(HANDOVER_EVENT), alive), owners, user_proxy)
    out: dict[str, list[Proxy]] = {}
    for user, proxy_vm in user_proxy.items():
        vm = store.vm(proxy_vm) if proxy_vm else None
        if vm is None:
            continue
        mine = frozenset(d for d, u in owners.items() if u == user)
        parts: dict[str, set[str]] = {}
        for dev in sorted(mine & moved.keys()):
            parts.setdefault(moved[dev], set()).add(dev)
        mobile_vm = store.vm(min(parts)) if parts else None
        if mobile_vm is None:
            out[user] = [Proxy(vm.name, user, vm.node, mine, memory_bytes)]
            continue
        away = frozenset(parts[mobile_vm.name])
        out[user] = [
            Proxy(vm.name, user, vm.node, mine - away, memory_bytes, "static"),
            Proxy(mobile_vm.name, user, mobile_vm.node, away, mobile_vm.memory_mib << 20,
                  "mobile")]
    return out


def build_control_plane(session: FleetSession, store: Store, state_dir: Path,
                        params: ControlParams, calibration: Calibration | None,
                        dwell: DwellEstimator | None = None,
                        memory_mib: int = 128) -> ControlPlane:
    mme = mme_from_store(store)
    unknown = {bs.node for bs in mme.stations.values()} - set(session.fleet.nodes)
    if unknown:
        raise UserError(f"base stations map to unknown fog nodes: {', '.join(sorted(unknown))}")
    controller = Controller(params, TmigCache(calibration), dwell or ConstantDwell(600.0), mme,
                            clock=time.time, proxy_memory_bytes=memory_mib << 20)
    controller.proxies = proxies_from_store(store, memory_mib << 20)
    return ControlPlane(controller, FleetApplier(session, store, state_dir), store,
                        resync=lambda user: proxies_from_store(store, memory_mib << 20).get(user))
