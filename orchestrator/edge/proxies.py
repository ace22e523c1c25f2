"""Proxy VMs: one per user (or per group of trusting users), and the device directory.

Why a directory file: devices learn their proxy's address from the orchestrator (the MME's
role in the paper). The orchestrator writes `dataplane/directory.json` under the state
directory — user → proxy address and stream port, plus an entry per device that another
proxy serves (the mobile part of a decomposed proxy) — and device emulators read it again
on every reconnect, preferring their own entry, so devices follow a decomposition and a
composition. Which proxy serves a device is the last completed handover's (store events
of kind "handover", see edge/handover.py); devices never handed over are served by their
user's proxy. A live migration keeps the address, so the directory does not change.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.guest.edgeiot_agent import wire
from orchestrator.edge.devices import DeviceRegistry
from orchestrator.edge.users import UserRegistry, proxy_name
from orchestrator.edge.vms import VmService
from orchestrator.errors import UserError
from orchestrator.fog.guest_agent import GuestAgent
from orchestrator.fog.session import FleetSession
from orchestrator.store import Store

STREAM_PORT = wire.STREAM_PORT
PROXY_MEMORY_MIB = 128


def directory_path(state_dir: Path) -> Path:
    return state_dir / "dataplane" / "directory.json"


HANDOVER_EVENT = "handover"
OFFLOAD_EVENT = "offload"  # the same kind AppService records for application VMs


def _entry(vm: str, addresses: Mapping[str, str]) -> dict[str, Any]:
    return {"proxy": addresses[vm], "port": STREAM_PORT, "vm": vm}


def directory(users: list[dict[str, Any]], addresses: Mapping[str, str],
              devices: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Directory content: each user with a proxy whose address is known, and (only when
    there are some) the devices served by another proxy than their user's."""
    out: dict[str, Any] = {"users": {u["name"]: _entry(u["proxy_vm"], addresses)
                                     for u in users if u["proxy_vm"] in addresses}}
    own = {dev: _entry(vm, addresses) for dev, vm in sorted((devices or {}).items())
           if vm in addresses}
    if own:
        out["devices"] = own
    return out


def assignments(handovers: Iterable[dict[str, Any]], alive: Mapping[str, str]) -> dict[str, str]:
    """device → the proxy VM its last completed handover gave it to, if that very VM (same
    uuid: names are reused) still exists; `alive` maps VM name → uuid."""
    out: dict[str, str | None] = {}
    for event in handovers:
        to = event["data"]["to"]
        for dev in event["data"]["devices"]:
            out[dev] = to if alive.get(to) == event["data"]["to_uuid"] else None
    return {dev: vm for dev, vm in out.items() if vm is not None}


def elsewhere(assigned: Mapping[str, str], owners: Mapping[str, str],
              user_proxy: Mapping[str, str | None]) -> dict[str, str]:
    """The devices assigned to another proxy than their user's (mobile parts)."""
    return {dev: vm for dev, vm in assigned.items()
            if dev in owners and vm != user_proxy.get(owners[dev])}


@dataclass(frozen=True)
class ProxyPlacement:
    vm: str
    node: str
    offloaded: bool  # placed in the cloud node because `wanted` lacked the capacity
    created: bool
    wanted: str

    def message(self) -> str:
        """How the CLI says where the proxy runs (and, when offloaded, why)."""
        where = f"proxy VM {self.vm} on {self.node}"
        if self.offloaded:
            where += f" (offloaded to the cloud: fog node {self.wanted} lacks capacity)"
        return where


@dataclass
class ProxyService:
    session: FleetSession
    store: Store
    state_dir: Path

    def agent(self, vm: str) -> GuestAgent:
        return VmService(self.session, self.store).agent(vm, timeout_s=10.0)

    def ensure(self, user: str, node: str, memory_mib: int = PROXY_MEMORY_MIB) -> str:
        """The user's proxy VM, created on `node` if it does not exist yet (or in the cloud
        node when `node` lacks the capacity: see `ensure_placed`)."""
        return self.ensure_placed(user, node, memory_mib).vm

    def ensure_placed(self, user: str, node: str,
                      memory_mib: int = PROXY_MEMORY_MIB) -> ProxyPlacement:
        """The user's proxy VM and where it runs. A new one goes where application VMs go
        (`AppService.place`): `node`, or the cloud node when `node` lacks room, recorded as
        an "offload" event. Without a cloud node, `node` it is, and a full node refuses."""
        from orchestrator.edge.apps import AppService  # apps.py imports this module
        apps = AppService(self.session, self.store, self.state_dir)
        record = UserRegistry(self.store).require(user)
        vm = record["proxy_vm"] or proxy_name(user)
        existing = self.store.vm(vm)
        if existing is not None:
            placed, offloaded = existing.node, False
        else:  # without a cloud node, `node` itself refuses when full (VmService says why)
            placed, offloaded = (apps.place(node, memory_mib) if apps.cloud_node() is not None
                                 else (node, False))
            VmService(self.session, self.store).create(vm, placed, memory_mib, role="proxy")
            if offloaded:
                self.store.add_event(OFFLOAD_EVENT, vm, {"user": user, "role": "proxy",
                                                         "wanted": node, "node": placed})
        if record["proxy_vm"] != vm:
            self.store.set_user_proxy(user, vm)
        self.push_devices(vm)
        if existing is None:  # applications installed before this proxy existed serve it too
            apps.serve_new_proxy(vm, placed)
        self.write_directory()
        return ProxyPlacement(vm, placed, offloaded, existing is None, node)

    def users_of(self, vm: str) -> list[str]:
        return [u["name"] for u in self.store.users() if u["proxy_vm"] == vm]

    def push_devices(self, vm: str) -> int:
        """Tell the proxy the profile and credential of every device of every user it serves."""
        devices = DeviceRegistry(self.store).registrations(
            d for u in self.users_of(vm) for d in self.store.devices(u))
        if devices:
            self.agent(vm).request("device_register", devices=devices)
        return len(devices)

    def actuate(self, device_id: str, command: dict[str, Any]) -> dict[str, Any]:
        """Forward a command to an actuator through the proxy VM serving it now."""
        device = DeviceRegistry(self.store).require_actuator(device_id)
        vm = self.served_elsewhere().get(device_id) or \
            UserRegistry(self.store).require(device["user"])["proxy_vm"]
        if not vm or self.store.vm(vm) is None:
            raise UserError(f"user {device['user']!r} has no proxy VM")
        answer = self.agent(vm).request("actuate", device=device_id, command=command)
        return {"device": device_id, "proxy_vm": vm, "sent": bool(answer.get("sent"))}

    def running_proxies(self) -> dict[str, str]:
        """proxy VM → node, for proxies the store knows (the node where it was last put):
        users' proxies and the mobile parts serving some of their devices."""
        vms = {u["proxy_vm"] for u in self.store.users() if u["proxy_vm"]}
        vms |= set(self.served_elsewhere().values())
        return {vm: rec.node for vm in sorted(vms) if (rec := self.store.vm(vm)) is not None}

    def served_elsewhere(self, pending: Mapping[str, str] | None = None) -> dict[str, str]:
        """device → proxy VM, for devices not served by their user's proxy right now
        (`pending`, device → VM, counts as done: a handover under way)."""
        owners = {d["id"]: d["user"] for d in self.store.devices()}
        user_proxy = {u["name"]: u["proxy_vm"] for u in self.store.users()}
        alive = {r.name: r.uuid for r in self.store.vms()}
        assigned = {**assignments(self.store.events(HANDOVER_EVENT), alive), **(pending or {})}
        return elsewhere(assigned, owners, user_proxy)

    def served_by(self, vm: str) -> list[str]:
        """The devices a proxy VM serves now."""
        moved = self.served_elsewhere()
        users = set(self.users_of(vm))
        return sorted(d["id"] for d in self.store.devices()
                      if moved.get(d["id"], vm if d["user"] in users else None) == vm)

    def write_directory(self, pending: Mapping[str, str] | None = None) -> Path:
        """Write the directory; `pending` (device → VM) is a handover under way."""
        addresses = {r.name: r.address for r in self.store.vms() if r.address}
        content = directory(self.store.users(), addresses, self.served_elsewhere(pending))
        path = directory_path(self.state_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(content, indent=1))
        tmp.replace(path)
        return path

    def stats(self, user: str) -> dict[str, Any]:
        """The user's proxy's stream stats; while decomposed, the devices a mobile part
        serves are shown as that part reports them. Each device says which proxy serves it."""
        vm = UserRegistry(self.store).require(user)["proxy_vm"]
        if not vm or self.store.vm(vm) is None:
            raise UserError(f"user {user!r} has no proxy VM")
        out = self.agent(vm).request("stream_stats")
        for dev in out["devices"].values():
            dev["proxy"] = vm
        mine = {d["id"] for d in self.store.devices(user)}
        for part in sorted({p for d, p in self.served_elsewhere().items() if d in mine}):
            theirs = self.agent(part).request("stream_stats")["devices"]
            out["devices"].update({d: {**s, "proxy": part} for d, s in theirs.items()
                                   if d in mine and not s["away"]})
        return out
