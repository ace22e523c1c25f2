"""Turns a lab topology into side effects, and takes them all away again.

`Lab.up()` creates, in this order: the state file, the core bridge with the gateway address
(the route that keeps lab traffic on this machine), each node's namespace, veth and VM
bridge, the core shaping, then each node's daemons; it waits for every libvirtd and probes
the domain type once. Any failure tears down whatever was made. `Lab.down()` is idempotent
and also works from the prefix alone after a crash: it ends the processes inside the lab's
namespaces (by pid: they are the lab's own), deletes the namespaces and links, and removes
the runtime directories.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil

from orchestrator.errors import OrchestratorError, UserError
from orchestrator.fog.hypervisor import (
    DEFAULT_PORTS,
    Hypervisor,
    wait_until_reachable,
    warm_capabilities,
)
from orchestrator.fog.node import FogNode
from orchestrator.fog.probe import choose_domain_type
from orchestrator.images import GuestImage, local_image
from orchestrator.lab import state
from orchestrator.lab.daemons import (
    NodeDirs,
    prepare_node_dirs,
    read_pid,
    seed_capabilities,
    start_daemons,
)
from orchestrator.lab.network import LabNetwork
from orchestrator.lab.sdn import SdnNetwork, stop_core
from orchestrator.lab.topology import (
    MAX_NODES,
    VM_BRIDGE,
    LabSpec,
    NodePlan,
    Topology,
    plan,
)
from orchestrator.netguard import LabNetwork as GuardedSubnet
from orchestrator.netguard import NetworkPolicy, check_destination
from orchestrator.runner import LocalRunner, Runner

PROBE_CACHE = "domain-type-probe.json"


class Lab:
    def __init__(self, spec: LabSpec, state_dir: Path, runner: Runner | None = None,
                 image: GuestImage | None = None) -> None:
        self.spec = spec
        self.topology: Topology = plan(spec)
        self.paths = state.LabPaths(state_dir, spec.prefix)
        self.runner = runner or LocalRunner()
        self.network = (SdnNetwork(self.topology, self.paths.root, self.runner)
                        if spec.core == "sdn" else LabNetwork(self.topology, self.runner))
        self.source_image = image or local_image()
        self.up_lock_path = state.UP_LOCK

    @property
    def image(self) -> GuestImage:
        """The lab's own copy of the guest image, frozen at `lab up`.

        NOTE: QEMU reads -kernel/-initrd again when a migration's destination starts; if the
        build replaced them meanwhile, source and destination disagree on the ROM blobs. The
        copy keeps every VM of the lab on the bytes it booted from, as a real host would.
        """
        return GuestImage(self.paths.root / "image")

    @classmethod
    def recorded(cls, state_dir: Path, prefix: str) -> Lab:
        """The lab as its state file records it; without one, the widest lab of that prefix,
        which is what teardown after a crash must scan for."""
        record = state.load(state.LabPaths(state_dir, LabSpec(prefix=prefix).prefix))
        spec = (LabSpec(**record["spec"]) if record
                else LabSpec(prefix=prefix, nodes=MAX_NODES, cloud=True))
        return cls(spec, state_dir)

    @property
    def policy(self) -> NetworkPolicy:
        t = self.topology
        return NetworkPolicy(labs=(GuardedSubnet(t.spec.network, t.bridge),))

    # --- up ------------------------------------------------------------------------

    def up(self) -> dict[str, Any]:
        """Bring the lab up; refused (having made and removed nothing) when its prefix or
        subnet is taken. Checks and build run under the host's `lab up` lock, so a failed
        build tears down only what this call made."""
        self._refuse_if_present()  # at once when it is plain; again under the lock
        with state.up_lock(self.up_lock_path):
            return self._up()

    def _up(self) -> dict[str, Any]:
        self._refuse_if_present()
        self.source_image.check()
        started = time.monotonic()
        record: dict[str, Any] = {"status": "starting", "spec": asdict(self.spec),
                                  "bridge": self.topology.bridge, "pid": os.getpid(),
                                  "gateway": self.topology.gateway, "nodes": []}
        state.save(self.paths, record)
        try:
            self.source_image.copy_to(self.image.directory)
            self._build(record)
        except BaseException:
            self.down()
            raise
        record["status"] = "up"
        record["up_seconds"] = round(time.monotonic() - started, 3)
        state.save(self.paths, record)
        return record

    def _refuse_if_present(self) -> None:
        if state.load(self.paths) is not None or self.network.lab_namespaces():
            raise UserError(f"lab {self.spec.prefix!r} is already up (or left by a crash): "
                            "run 'orchestrator lab down' first")
        taken = self.network.subnet_routes()
        if taken:
            raise UserError(f"subnet {self.spec.subnet} is already routed ({taken[0]}): "
                            "choose another --subnet")

    def _build(self, record: dict[str, Any]) -> None:
        self.network.create_core()
        self.network.guard_root()
        for node in self.topology.nodes:
            self.network.create_node(node)
            self.network.create_devices(node)
            self.network.guard_node(node)  # before any daemon of the node listens
            self.network.shape(node, node.rate_mbit, node.delay_ms)
            record["nodes"].append(self._node_entry(node))
            state.save(self.paths, record)
        first: FogNode | None = None
        for entry, node in zip(record["nodes"], self.topology.nodes, strict=True):
            dirs = NodeDirs(self.paths.node_dir(node.name))
            entry["host_uuid"] = prepare_node_dirs(dirs, node)
            if first is not None:
                seed_capabilities(self.paths.node_dir(first.name), dirs)
            start_daemons(node, dirs, self.runner)
            entry["libvirtd_pid"] = read_pid(dirs.libvirtd_pidfile)
            entry["virtlogd_pid"] = read_pid(dirs.virtlogd_pidfile)
            state.save(self.paths, record)
            if first is None:
                first = self._fog_node(node.name, None)
                wait_until_reachable(first, self.policy)
                warm_capabilities(first, self.policy)
        nodes = [self._fog_node(e["name"], None) for e in record["nodes"]]
        for fog in nodes:
            wait_until_reachable(fog, self.policy)
        record["domain_type"] = self._domain_type(nodes[0])

    @staticmethod
    def _node_entry(node: NodePlan) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": node.name, "namespace": node.namespace,
                                 "address": node.address, "kind": node.kind}
        if node.devices is not None:
            entry["devices_namespace"] = node.devices.namespace
            entry["devices_address"] = node.devices.address
        return entry

    def _domain_type(self, first: FogNode) -> str:
        """Probe once per host boot: every lab node shares this machine's hypervisor."""
        cache = self.paths.state_dir / PROBE_CACHE
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        try:
            cached = json.loads(cache.read_text())
            if cached.get("boot_id") == boot_id:
                return str(cached["domain_type"])
        except (OSError, ValueError, KeyError):
            pass
        hv = Hypervisor.open(first, self.policy)
        try:
            domain_type = choose_domain_type(hv, self.image)
        finally:
            hv.close()
        cache.write_text(json.dumps({"boot_id": boot_id, "domain_type": domain_type}))
        return domain_type

    def _fog_node(self, name: str, domain_type: str | None) -> FogNode:
        node = next(n for n in self.topology.nodes if n.name == name)
        return FogNode(
            name=node.name, uri=f"qemu+tcp://{node.address}/system", address=node.address,
            vm_bridge=VM_BRIDGE, image_dir=str(self.image.directory), domain_type=domain_type,
            facts={"lab": self.spec.prefix, "namespace": node.namespace, "kind": node.kind,
                   "core_mbit": node.rate_mbit, "core": self.spec.core,
                   "migration_mbit": self.spec.migration_mbit,
                   "memory_mib": self.spec.node_memory_mib if node.kind == "fog" else None,
                   "subnet": self.spec.subnet, "gateway": self.topology.gateway,
                   "vm_network": str(self.topology.vm_network),
                   "devices_namespace": node.devices.namespace if node.devices else None,
                   "devices_address": node.devices.address if node.devices else None},
        )

    # --- using a running lab ----------------------------------------------------------

    def fog_nodes(self) -> list[FogNode]:
        record = self.require_up()
        return [self._fog_node(e["name"], record.get("domain_type")) for e in record["nodes"]]

    def require_up(self) -> dict[str, Any]:
        record = state.load(self.paths)
        if record is None or record.get("status") != "up":
            raise UserError(f"lab {self.spec.prefix!r} is not up: run 'orchestrator lab up'")
        return record

    def status(self) -> dict[str, Any]:
        record = state.load(self.paths) or {"status": "down", "nodes": []}
        for entry in record.get("nodes", []):
            pid = entry.get("libvirtd_pid")
            entry["libvirtd_running"] = bool(pid and psutil.pid_exists(pid))
        record["namespaces"] = self.network.lab_namespaces()
        record["core_bytes"] = self.network.core_link_bytes() if record["namespaces"] else {}
        record["guard"] = self.guard_counters(record) if record["namespaces"] else {}
        if isinstance(self.network, SdnNetwork) and record["namespaces"]:
            try:
                record["core_stats"] = self.network.core_stats()
            except OrchestratorError as exc:
                record["core_stats"] = {"connected": False, "error": str(exc)}
        return record

    def core_counters(self) -> dict[str, dict[str, int]]:
        """Bytes over each node's core link: on the SDN core the switch's own port counters
        (what the controller reports), else the root-side veths' counters."""
        if isinstance(self.network, SdnNetwork):
            stats = self.network.core_stats()
            if stats.get("connected"):
                return dict(stats["links"])
        return self.network.core_link_bytes()

    def core_classes(self) -> dict[str, dict[str, int]] | None:
        """Core bytes and packets per traffic class (raw, metadata, migration, control,
        other) from the SDN controller's flow stats; None on the Linux-bridge core or while
        the controller has no switch."""
        if not isinstance(self.network, SdnNetwork):
            return None
        stats = self.network.core_stats()
        return dict(stats["classes"]) if stats.get("connected") else None

    def _entry(self, record: dict[str, Any], node: str) -> dict[str, Any]:
        entry = next((e for e in record["nodes"] if e["name"] == node), None)
        if entry is None:
            raise UserError(f"unknown fog node {node!r}")
        return entry

    def enter_argv(self, node: str) -> list[str]:
        """argv prefix that runs a command inside a node's network and mount namespaces.

        virtlogd anchors the namespaces: it outlives a libvirtd restart."""
        entry = self._entry(self.require_up(), node)
        anchor = entry.get("virtlogd_pid") or entry.get("libvirtd_pid")
        if not anchor or not psutil.pid_exists(anchor):
            raise UserError(f"fog node {node!r} has no running daemons")
        return ["nsenter", "--target", str(anchor), "--mount", "--net", "--"]

    def devices_netns(self, node: str) -> str:
        """Path of a fog node's devices namespace (for setns: the emulator's attachments)."""
        self._entry(self.require_up(), node)
        plan_ = next(n for n in self.topology.nodes if n.name == node)
        if plan_.devices is None:
            raise UserError(f"node {node!r} has no devices namespace (only fog nodes do)")
        return f"/run/netns/{plan_.devices.namespace}"

    def devices_enter_argv(self, node: str) -> list[str]:
        """argv prefix that runs a command where a fog node's devices sit: their own network
        namespace behind the node's VM bridge, not the node's (see topology.DevicesPlan).
        Such a process reaches VMs and other devices but no node's management port."""
        return ["nsenter", f"--net={self.devices_netns(node)}", "--"]

    def guard_counters(self, record: dict[str, Any] | None = None) -> dict[str, dict[str, int]]:
        """Packets the trust boundary refused, dropped or found spoofed: per node's
        namespace, and "gateway" for the root namespace's table."""
        counters = {"gateway": self.network.guard_counters(None)}
        for entry in (record or self.require_up())["nodes"]:
            counters[entry["name"]] = self.network.guard_counters(entry["namespace"])
        return counters

    def restart_libvirtd(self, node: str) -> int:
        """(Re)start a node's libvirtd in its namespaces, as after a daemon crash or upgrade.

        Running domains survive: libvirtd reconnects to their QEMU processes on start."""
        record = self.require_up()
        entry = self._entry(record, node)
        dirs = NodeDirs(self.paths.node_dir(node))
        old = entry.get("libvirtd_pid")
        if old and psutil.pid_exists(old):
            terminate([old])
        dirs.libvirtd_pidfile.unlink(missing_ok=True)
        self.runner.run([*self.enter_argv(node), "libvirtd", "-d", "--listen", "-p",
                         str(dirs.libvirtd_pidfile)])
        entry["libvirtd_pid"] = wait_for_pid(dirs.libvirtd_pidfile)
        state.save(self.paths, record)
        wait_for_listener(entry["address"], self.policy)
        return int(entry["libvirtd_pid"])

    # --- down ----------------------------------------------------------------------

    def down(self) -> dict[str, int]:
        """Remove everything carrying the lab's prefix; safe to run any number of times."""
        record = state.load(self.paths) or {}
        namespaces = sorted(set(self.network.lab_namespaces())
                            | {e["namespace"] for e in record.get("nodes", [])}
                            | {e["devices_namespace"] for e in record.get("nodes", [])
                               if e.get("devices_namespace")})
        killed = self._end_processes(namespaces)
        killed += stop_core(self.paths.root, self.spec.prefix)  # SDN core, if any
        self.network.delete_namespaces(namespaces)
        self.network.unguard_root()
        links = self.network.lab_links()
        self.network.delete_links(links)
        for node in self.topology.nodes:
            node_dir = self.paths.node_dir(node.name)
            for key in ("run", "lib", "etc", "cache"):
                shutil.rmtree(node_dir / key, ignore_errors=True)
        shutil.rmtree(self.image.directory, ignore_errors=True)
        state.remove(self.paths)
        return {"processes": killed, "namespaces": len(namespaces), "links": len(links)}

    def _end_processes(self, namespaces: list[str], rounds: int = 4) -> int:
        """End everything in the lab's namespaces or started from its directory, scanning
        again until nothing is left.

        NOTE: a libvirtd still alive while its QEMUs are being ended can start one more (the
        incoming side of a migration) after a scan; that QEMU then outlived the namespace
        names and the lab. A crashed `lab up` may also leave processes in namespaces whose
        names are gone, which only their command line (the lab's paths) still names.
        """
        ended = 0
        for _ in range(rounds):
            pids = {p for ns in namespaces for p in self.network.namespace_pids(ns)}
            pids |= set(processes_under(self.paths.root))
            pids.discard(os.getpid())
            if not pids:
                break
            ended += terminate(sorted(pids))
        return ended


def wait_for_listener(address: str, policy: NetworkPolicy, timeout_s: float = 20.0) -> None:
    """Until libvirtd accepts connections on its TCP or its TLS port.

    NOTE: not a libvirt connection: a node that `orchestrator deploy` switched to TLS no
    longer listens on plain TCP, and which client certificate to use is the caller's
    business, not the lab's.
    """
    check_destination(address, policy)
    deadline = time.monotonic() + timeout_s
    while True:
        for port in DEFAULT_PORTS.values():
            try:
                socket.create_connection((address, port), timeout=1.0).close()
                return
            except OSError:
                continue
        if time.monotonic() > deadline:
            raise OrchestratorError(f"libvirtd at {address} accepts no connection "
                                    f"after {timeout_s:g} s")
        time.sleep(0.1)


def processes_under(root: Path) -> list[int]:
    """Processes whose command line names a path inside `root` (daemons' pid files, QEMU's
    kernel and disks all live there)."""
    marker = f"{root}/"
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(marker in arg for arg in proc.info["cmdline"] or ()):
            found.append(proc.pid)
    return found


def terminate(pids: list[int], grace_s: float = 5.0) -> int:
    """SIGTERM the given processes, SIGKILL what is left after the grace period."""
    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.send_signal(signal.SIGTERM)
            procs.append(proc)
        except psutil.NoSuchProcess:
            continue
    _gone, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    return len(procs)


def wait_for_pid(pidfile: Path, timeout_s: float = 15.0) -> int:
    deadline = time.monotonic() + timeout_s
    while (pid := read_pid(pidfile)) is None:
        if time.monotonic() > deadline:
            raise OrchestratorError(f"{pidfile} did not appear within {timeout_s:g} s")
        time.sleep(0.05)
    return pid


def require_root() -> None:
    if os.geteuid() != 0:
        raise UserError("the lab needs root (network namespaces, bridges, libvirtd)")

