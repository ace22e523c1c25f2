"""Applications: their VMs (local, remote in the cloud, add-on for an event) and models.

Why this shape: installing an application means (1) placing its application VM — in the
fog node (local), in the cloud node (remote), or one per fog node of an area (add-on, for
an event such as finding a missing child) — falling back to the cloud when a fog node
lacks capacity, and saying so; (2) installing its semantic model, with the data types it
is granted, into the proxy VMs it serves, pointed at that application VM. Proxies enforce
the grants; the orchestrator checks them first so a refused application creates nothing.

Installing a model is also what authorises a proxy to feed an application VM: the proxy
gets, with the sink's address, the sink key `wire.sink_key(application VM's key,
application, proxy VM)`, which the application VM derives from its own key to verify the
proxy's `hello`. Only the proxies the orchestrator installed the model on hold one.
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.guest.edgeiot_agent import wire
from agent.guest.edgeiot_agent.models import MODELS
from agent.guest.edgeiot_agent.permissions import PermissionDenied, check_grants
from orchestrator.edge.capacity import MIB, free_vm_memory_bytes
from orchestrator.edge.devices import validate_type
from orchestrator.edge.proxies import OFFLOAD_EVENT, ProxyService
from orchestrator.edge.vms import VmService
from orchestrator.errors import OrchestratorError, UserError
from orchestrator.fog.guest_agent import GuestAgent
from orchestrator.fog.session import FleetSession
from orchestrator.store import Store

KINDS = {"parknet": "parknet", "traffic": "traffic", "facefind": "faces"}  # kind → model
DEPLOYMENTS = ("local", "remote", "addon")
APP_MEMORY_MIB = 128
DEFAULT_FOG_CAPACITY_MIB = 1024
APP_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


def choose_node(wanted: str, memory_mib: int, used_mib: dict[str, int],
                capacity_mib: dict[str, float], cloud: str | None) -> tuple[str, bool]:
    """(node, offloaded): `wanted` if it has room for the VM, else the cloud node."""
    if used_mib.get(wanted, 0) + memory_mib <= capacity_mib.get(wanted, math.inf):
        return wanted, False
    if cloud is None:
        raise OrchestratorError(f"fog node {wanted} lacks capacity for a {memory_mib} MiB VM "
                                "and the fleet has no cloud node to offload to")
    return cloud, True


def parse_pgm(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, pixels) of a binary 8-bit PGM (P5), the target image format."""
    parts = data.split(maxsplit=4)
    if len(parts) < 5 or parts[0] != b"P5":
        raise UserError("target image must be a binary PGM (P5)")
    try:
        w, h, maxval = int(parts[1]), int(parts[2]), int(parts[3])
    except ValueError:
        raise UserError("target image: bad PGM header") from None
    px = parts[4][:w * h]
    if maxval != 255 or len(px) != w * h or not (8 <= w <= 64 and 8 <= h <= 64):
        raise UserError("target image must be 8..64 pixels a side, 8-bit, complete")
    return w, h, px


def face_params(target_image: Path, max_distance: int = 10) -> dict[str, Any]:
    try:
        w, h, px = parse_pgm(target_image.read_bytes())
    except OSError as exc:
        raise UserError(f"cannot read target image {target_image}: {exc.strerror}") from None
    return {"target_px": base64.b64encode(px).decode(), "w": w, "h": h,
            "max_distance": max_distance}


def models_to_copy(applications: list[dict[str, Any]], source_vm: str, target_vm: str,
                   target_node: str, types: set[str]) -> list[tuple[str, str]]:
    """(application, sink VM) of each model installed on `source_vm` (and not yet on
    `target_vm`) that reads one of `types` — what a proxy taking those devices over needs.
    The sink stays the source's, except an add-on application sinks into its VM on the
    target node if it has one."""
    out = []
    for app in applications:
        model = next((m for m in app["models"] if m["proxy_vm"] == source_vm), None)
        if model is None or any(m["proxy_vm"] == target_vm for m in app["models"]):
            continue
        if not set(app["types"]) & MODELS[KINDS[app["kind"]]].READS & types:
            continue
        local = [v["vm"] for v in app["vms"] if v["node"] == target_node]
        sink = local[0] if app["deployment"] == "addon" and local else model["sink_vm"]
        out.append((app["name"], sink))
    return out


def models_for_new_proxy(applications: list[dict[str, Any]], proxy_vm: str,
                         node: str) -> list[tuple[str, str]]:
    """(application, sink VM) of each application that serves a proxy VM new on `node`:
    every remote application, and each local or add-on application with a VM on that node.

    A local application offloaded to the cloud does not record the fog node it serves, so a
    new proxy there is not given its model (install the application again to include it)."""
    out = []
    for app in applications:
        if any(m["proxy_vm"] == proxy_vm for m in app["models"]) or not app["vms"]:
            continue
        if app["deployment"] == "remote":
            out.append((app["name"], app["vms"][0]["vm"]))
            continue
        local = [v["vm"] for v in app["vms"] if v["node"] == node and not v["offloaded"]]
        if local:
            out.append((app["name"], local[0]))
    return out


def validate_grants(kind: str, types: list[str] | None) -> list[str]:
    """The data types granted (default: what the kind's model reads); refuses unknown types
    and models that would read beyond their grants."""
    if kind not in KINDS:
        raise UserError(f"unknown application kind {kind!r} (known: {', '.join(KINDS)})")
    model = KINDS[kind]
    granted = sorted(MODELS[model].READS) if types is None else [validate_type(t) for t in types]
    try:
        check_grants(model, MODELS[model].READS, granted)
    except PermissionDenied as exc:
        raise UserError(f"permission denied: {exc}") from None
    return granted


@dataclass
class AppService:
    session: FleetSession
    store: Store
    state_dir: Path
    fog_capacity_mib: int | None = None

    # --- placement ---------------------------------------------------------------------

    def cloud_node(self) -> str | None:
        nodes = self.session.fleet.nodes
        found = [n for n, node in nodes.items() if node.facts.get("kind") == "cloud"]
        return sorted(found)[0] if found else None

    def capacities(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, node in self.session.fleet.nodes.items():
            if node.facts.get("kind") == "cloud":
                out[name] = math.inf
            else:
                out[name] = float(node.facts.get("memory_mib") or self.fog_capacity_mib
                                  or DEFAULT_FOG_CAPACITY_MIB)
        return out

    def used(self) -> dict[str, int]:
        used: dict[str, int] = {}
        for vm in self.store.vms():
            used[vm.node] = used.get(vm.node, 0) + vm.memory_mib
        return used

    def place(self, wanted: str, memory_mib: int = APP_MEMORY_MIB) -> tuple[str, bool]:
        """The node for a new VM (application or proxy) of `memory_mib`: `wanted`, or the
        cloud when `wanted` lacks room by our accounting or by what the node itself reports
        free."""
        self.session.fleet.node(wanted)
        used, capacity = self.used(), self.capacities()
        free_mib = free_vm_memory_bytes(self.session, wanted) // MIB
        capacity[wanted] = min(capacity[wanted], used.get(wanted, 0) + free_mib)
        return choose_node(wanted, memory_mib, used, capacity, self.cloud_node())

    # --- install / event / remove --------------------------------------------------------

    def _check_new(self, name: str) -> None:
        if not APP_NAME.match(name):
            raise UserError(f"invalid application name {name!r}: 1-31 of [a-z0-9-], letter first")
        if self.store.application(name) is not None:
            raise UserError(f"application {name!r} already exists")

    def install(self, name: str, kind: str, deployment: str, node: str | None = None,
                types: list[str] | None = None, params: dict[str, Any] | None = None
                ) -> dict[str, Any]:
        """Local (on `node`, serving that node's proxies) or remote (in the cloud, serving
        every proxy)."""
        self._check_new(name)
        granted = validate_grants(kind, types)
        if deployment == "local":
            if node is None:
                raise UserError("a local application needs --node")
            if node == self.cloud_node():
                raise UserError(f"{node} is the cloud node: deploy remote instead")
            placed, offloaded = self.place(node)
            serves = [vm for vm, n in self._proxies().items() if n == node]
        elif deployment == "remote":
            placed, offloaded = self.cloud_node() or "", False
            if not placed:
                raise UserError("no cloud node in this fleet: run 'orchestrator lab up --cloud'")
            serves = list(self._proxies())
        else:
            raise UserError(f"--deploy must be local or remote, got {deployment!r}")
        self.store.add_application(name, kind, deployment, granted, params or {})
        try:
            vm = self._start_vm(name, f"app-{name}", placed, offloaded)
            for proxy in serves:
                self._install_model(name, kind, granted, params or {}, proxy, vm)
        except BaseException:
            self.remove(name)
            raise
        return self.describe(name)

    def event(self, name: str, area: list[str], kind: str = "facefind",
              params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Add-on VMs in every fog node of the area; each serves the proxies of its node."""
        self._check_new(name)
        granted = validate_grants(kind, None)
        if not area:
            raise UserError("--area needs at least one fog node")
        for node in area:
            self.session.fleet.node(node)
        self.store.add_application(name, kind, "addon", granted, params or {})
        try:
            for node in area:
                placed, offloaded = self.place(node)
                vm = self._start_vm(name, f"ev-{name}-{node}", placed, offloaded)
                for proxy in [p for p, n in self._proxies().items() if n == node]:
                    self._install_model(name, kind, granted, params or {}, proxy, vm)
        except BaseException:
            self.remove(name)
            raise
        return self.describe(name)

    def remove(self, name: str) -> dict[str, Any]:
        app = self.store.application(name)
        if app is None:
            raise UserError(f"unknown application {name!r}")
        for model in app["models"]:
            try:
                ProxyService(self.session, self.store, self.state_dir).agent(
                    model["proxy_vm"]).request("model_remove", app=name)
            except OrchestratorError:
                pass  # the proxy is gone; nothing left to uninstall
        vms = VmService(self.session, self.store)
        for vm in app["vms"]:
            if self.store.vm(vm["vm"]) is not None or self.session.locate(vm["vm"]):
                vms.destroy(vm["vm"])
        self.store.remove_application(name)
        return {"removed": name, "vms": [v["vm"] for v in app["vms"]]}

    def copy_models(self, source_vm: str, target_vm: str, target_node: str,
                    types: set[str]) -> list[str]:
        """Install on `target_vm` the models of `source_vm` that read any of `types`."""
        applications = self.store.applications()
        return self._install_on(target_vm, applications, models_to_copy(
            applications, source_vm, target_vm, target_node, types))

    def serve_new_proxy(self, proxy_vm: str, node: str) -> list[str]:
        """Install, on a proxy VM just created on `node`, the models of the applications
        already installed that serve it (see `models_for_new_proxy`)."""
        applications = self.store.applications()
        return self._install_on(proxy_vm, applications,
                                models_for_new_proxy(applications, proxy_vm, node))

    def _install_on(self, proxy_vm: str, applications: list[dict[str, Any]],
                    pairs: list[tuple[str, str]]) -> list[str]:
        """Install each (application, sink VM) model of `pairs` on `proxy_vm`."""
        by_name = {app["name"]: app for app in applications}
        for name, sink in pairs:
            app = by_name[name]
            self._install_model(name, app["kind"], app["types"], app["params"], proxy_vm, sink)
        return [name for name, _ in pairs]

    def _proxies(self) -> dict[str, str]:
        return ProxyService(self.session, self.store, self.state_dir).running_proxies()

    def _start_vm(self, app: str, vm: str, node: str, offloaded: bool) -> str:
        self.store.add_app_vm(app, vm, node, offloaded)
        if offloaded:
            self.store.add_event(OFFLOAD_EVENT, vm, {"app": app, "node": node})
        VmService(self.session, self.store).create(vm, node, APP_MEMORY_MIB, role="app")
        self.agent(vm).request("app_configure", app=app, kind=self.store.application(app)["kind"])
        return vm

    def sink(self, app: str, proxy: str, sink_vm: str) -> dict[str, Any]:
        """Where `proxy` sends `app`'s metadata, and the key that authorises it there."""
        vms = VmService(self.session, self.store)
        return {"host": vms.address_of(sink_vm), "port": wire.METADATA_PORT,
                "key": wire.sink_key(vms.key_of(sink_vm), app, proxy)}

    def _install_model(self, app: str, kind: str, granted: list[str], params: dict[str, Any],
                       proxy: str, sink_vm: str) -> None:
        sink = self.sink(app, proxy, sink_vm)
        try:
            ProxyService(self.session, self.store, self.state_dir).agent(proxy).request(
                "model_install", app=app, model=KINDS[kind], grants=granted, params=params,
                sink=sink)
        except OrchestratorError as exc:
            if "permission denied" in str(exc):
                raise UserError(str(exc)) from None
            raise
        self.store.add_app_model(app, proxy, sink_vm)

    # --- using an application -------------------------------------------------------------

    def agent(self, vm: str) -> GuestAgent:
        return VmService(self.session, self.store).agent(vm, timeout_s=10.0)

    def describe(self, name: str) -> dict[str, Any]:
        app = self.store.application(name)
        if app is None:
            raise UserError(f"unknown application {name!r}")
        return app

    def query(self, name: str, q: str, args: dict[str, Any]) -> dict[str, Any]:
        """Ask the application; an add-on application's VMs are asked in turn and their
        list answers merged."""
        app = self.describe(name)
        merged: dict[str, Any] = {}
        for vm in app["vms"]:
            answer = self.agent(vm["vm"]).request("app_query", app=name, q=q, **args)
            answer.pop("ok", None)
            for key, value in answer.items():
                if isinstance(value, list) and isinstance(merged.get(key), list):
                    merged[key] = merged[key] + value
                else:
                    merged[key] = value
        return merged

    def received(self, name: str) -> dict[str, list[str]]:
        """Every line each of the application's VMs received (the privacy audit)."""
        out: dict[str, list[str]] = {}
        for vm in self.describe(name)["vms"]:
            lines: list[str] = []
            offset = 0
            while True:
                page = self.agent(vm["vm"]).request("app_received", offset=offset)
                lines += page["lines"]
                if page["next"] >= page["total"] or not page["lines"]:
                    break
                offset = page["next"]
            out[vm["vm"]] = lines
        return out
