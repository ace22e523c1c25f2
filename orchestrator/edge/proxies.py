"""Proxy VMs: one per user (or per group of trusting users), and the device directory.

Why a directory file: devices learn their proxy's address from the orchestrator (the MME's
role in the paper). The orchestrator writes `dataplane/directory.json` under the state
directory — user → proxy address and stream port — and device emulators read it again on
every reconnect, so when a user is given another proxy VM (decomposition, composition)
its devices follow. A live migration keeps the address, so the directory does not change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.edge.devices import profile
from orchestrator.edge.users import UserRegistry, proxy_name
from orchestrator.edge.vms import VmService
from orchestrator.errors import UserError
from orchestrator.fog.guest_agent import GuestAgent
from orchestrator.fog.session import FleetSession
from orchestrator.store import Store

STREAM_PORT = 7071
PROXY_MEMORY_MIB = 128


def directory_path(state_dir: Path) -> Path:
    return state_dir / "dataplane" / "directory.json"


def directory(users: list[dict[str, Any]], addresses: dict[str, str]) -> dict[str, Any]:
    """Directory content: each user with a proxy whose address is known."""
    return {"users": {u["name"]: {"proxy": addresses[u["proxy_vm"]], "port": STREAM_PORT,
                                  "vm": u["proxy_vm"]}
                      for u in users if u["proxy_vm"] in addresses}}


@dataclass
class ProxyService:
    session: FleetSession
    store: Store
    state_dir: Path

    def agent(self, vm: str) -> GuestAgent:
        return GuestAgent(VmService(self.session, self.store).address_of(vm),
                          self.session.fleet.policy, timeout_s=10.0)

    def ensure(self, user: str, node: str, memory_mib: int = PROXY_MEMORY_MIB) -> str:
        """The user's proxy VM, created on `node` if it does not exist yet."""
        record = UserRegistry(self.store).require(user)
        vm = record["proxy_vm"] or proxy_name(user)
        if self.store.vm(vm) is None:
            VmService(self.session, self.store).create(vm, node, memory_mib, role="proxy")
        if record["proxy_vm"] != vm:
            self.store.set_user_proxy(user, vm)
        self.push_devices(vm)
        self.write_directory()
        return vm

    def users_of(self, vm: str) -> list[str]:
        return [u["name"] for u in self.store.users() if u["proxy_vm"] == vm]

    def push_devices(self, vm: str) -> int:
        """Tell the proxy the profile of every device of every user it serves."""
        devices = [profile(d) for u in self.users_of(vm) for d in self.store.devices(u)]
        if devices:
            self.agent(vm).request("device_register", devices=devices)
        return len(devices)

    def running_proxies(self) -> dict[str, str]:
        """proxy VM → node, for proxies the store knows (the node where it was last put)."""
        vms = {u["proxy_vm"] for u in self.store.users() if u["proxy_vm"]}
        return {vm: rec.node for vm in sorted(vms) if (rec := self.store.vm(vm)) is not None}

    def write_directory(self) -> Path:
        addresses = {r.name: r.address for r in self.store.vms() if r.address}
        path = directory_path(self.state_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(directory(self.store.users(), addresses), indent=1))
        tmp.replace(path)
        return path

    def stats(self, user: str) -> dict[str, Any]:
        vm = UserRegistry(self.store).require(user)["proxy_vm"]
        if not vm or self.store.vm(vm) is None:
            raise UserError(f"user {user!r} has no proxy VM")
        return self.agent(vm).request("stream_stats")
