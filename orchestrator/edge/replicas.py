"""Replicas of a proxy VM's static part, and migrations that move only the difference.

Why disks: the static part of a proxy VM (semantic models, device profiles) changes
rarely, so it lives in a backing image; the VM writes into a qcow2 overlay on top. The
backing image is pre-placed at the user's top-k most visited fog nodes
(`model.placement.top_k_nodes`); a migration to such a node uses libvirt's incremental
storage migration (VIR_MIGRATE_NON_SHARED_INC: only the overlay is mirrored, plus memory),
elsewhere a full one (VIR_MIGRATE_NON_SHARED_DISK: the whole disk crosses the core).

Layout per node: a libvirt `dir` pool POOL at POOL_PATH holding `static-<user>.raw` (the
replica) and `<vm>.qcow2` (the overlay). NOTE: each lab node has its own private
/var/lib/libvirt, so the same path is a different file per node; libvirt finds the pool
by the disk's directory and pre-creates a missing destination volume itself (full copy),
and skips one that exists — which is how the incremental case gets an overlay whose
backing file is the destination's own replica.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from typing import Any

import libvirt  # NOTE: flag constants only; every libvirt call goes through fog.hypervisor

from orchestrator.edge.vms import VmService
from orchestrator.errors import OrchestratorError
from orchestrator.fog.domain_xml import Disk, to_xml
from orchestrator.fog.guest_agent import GuestAgent
from orchestrator.fog.session import FleetSession
from orchestrator.store import Store, VmRecord

POOL = "edgeiot"
POOL_PATH = "/var/lib/libvirt/images/edgeiot"
DISK_TARGET = "vdb"


def base_name(user: str) -> str:
    return f"static-{user}.raw"


def overlay_name(vm: str) -> str:
    return f"{vm}.qcow2"


def static_part(user: str, size: int) -> bytes:
    """Deterministic, incompressible content standing in for models and profiles (zeros
    would cross the core as tiny markers and hide what replicas save)."""
    seed = int.from_bytes(hashlib.sha256(user.encode()).digest()[:8], "big")
    return random.Random(seed).randbytes(size)


def raw_volume_xml(name: str, capacity: int) -> str:
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(capacity)
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", type="raw")
    return ET.tostring(vol, encoding="unicode")


def overlay_volume_xml(name: str, capacity: int, backing_path: str) -> str:
    """A qcow2 overlay on a raw backing image at backing_path (on the same node)."""
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(capacity)
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", type="qcow2")
    backing = ET.SubElement(vol, "backingStore")
    ET.SubElement(backing, "path").text = backing_path
    ET.SubElement(backing, "format", type="raw")
    return ET.tostring(vol, encoding="unicode")


def storage_flags(incremental: bool) -> int:
    """Live, peer-to-peer, persistent at the destination, gone from the source, and the
    disk mirrored: only the overlay (incremental) or all of it."""
    flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
             | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
    return int(flags | (libvirt.VIR_MIGRATE_NON_SHARED_INC if incremental
                        else libvirt.VIR_MIGRATE_NON_SHARED_DISK))


def storage_params() -> dict[str, Any]:
    # NOTE: uncapped: a bandwidth-capped multi-round pre-copy of a guest that dirties memory
    # can corrupt the guest under TCG on this QEMU (LAB-NOTES / known limitation).
    return {libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS: [DISK_TARGET]}


def completed_figures(stats: dict[str, Any]) -> dict[str, Any]:
    """What a storage migration moved, from the destination's completed job stats."""
    memory = int(stats.get("memory_processed", 0) or 0)
    disk = int(stats.get("disk_processed", 0) or 0)
    return {"memory_bytes_sent": memory, "disk_bytes_sent": disk,
            "transferred_bytes": memory + disk,
            "total_time_ms": stats.get("time_elapsed"), "downtime_ms": stats.get("downtime")}


@dataclass
class ReplicaService:
    session: FleetSession
    store: Store
    size_bytes: int = 32 * 2**20

    def prepare_nodes(self) -> None:
        for name in sorted(self.session.fleet.nodes):
            self.session.hypervisor(name).ensure_dir_pool(POOL, POOL_PATH)

    def place_base(self, user: str, nodes: list[str]) -> list[str]:
        """Put the user's static part on each node that lacks it; returns where it went."""
        placed, data = [], static_part(user, self.size_bytes)
        for node in nodes:
            hv = self.session.hypervisor(node)
            if hv.volume_path(POOL, base_name(user)) is not None:
                continue
            hv.create_volume(POOL, raw_volume_xml(base_name(user), self.size_bytes))
            hv.upload_volume(POOL, base_name(user), data)
            placed.append(node)
        return placed

    def has_base(self, user: str, node: str) -> bool:
        return self.session.hypervisor(node).volume_path(POOL, base_name(user)) is not None

    def _overlay(self, vm: str, user: str, node: str) -> str:
        hv = self.session.hypervisor(node)
        base = hv.volume_path(POOL, base_name(user))
        if base is None:
            raise OrchestratorError(f"{node} holds no replica of {user}'s static part")
        hv.delete_volume(POOL, overlay_name(vm))
        return hv.create_volume(POOL, overlay_volume_xml(overlay_name(vm), self.size_bytes,
                                                         base))

    def create_vm(self, name: str, node: str, user: str, memory_mib: int = 128,
                  wait_s: float = 60.0) -> VmRecord:
        """A proxy VM whose disk is an overlay on the user's static part (placed at node)."""
        vms = VmService(self.session, self.store)
        fog = self.session.fleet.node(node)
        self.place_base(user, [node])
        path = self._overlay(name, user, node)
        record = vms._plan(name, fog, memory_mib, 1, "proxy")  # hook: VmService(disks=...)
        spec = replace(vms._spec(record, fog), disks=(Disk(path, DISK_TARGET),))
        self.session.hypervisor(node).define_and_start(to_xml(spec))
        self.store.add_vm(record)
        if record.address and wait_s > 0:
            GuestAgent(record.address, self.session.fleet.policy).wait_ready(wait_s)
        return record

    def migrate(self, vm: str, destination: str, user: str,
                use_replica: bool = True) -> dict[str, Any]:
        """Storage + memory migration, incremental when the destination holds a replica.
        Recorded like every migration; the source's overlay is removed afterwards."""
        guests = [g for g in self.session.locate(vm) if g.is_running()]
        if len(guests) != 1:
            raise OrchestratorError(f"{vm} runs on {len(guests)} nodes, expected 1")
        guest = guests[0]
        source = guest.node
        incremental = use_replica and self.has_base(user, destination)
        if incremental:
            self._overlay(vm, user, destination)
        params = {"vm": vm, "destination": destination, "storage": "incremental"
                  if incremental else "full", "disk_bytes": self.size_bytes}
        record_id = self.store.start_migration(vm, source, destination, params, None,
                                               os.getpid())
        started = time.monotonic()
        try:
            guest.migrate(self.session.fleet.node(destination).uri, storage_params(),
                          storage_flags(incremental))
        except OrchestratorError as exc:
            self.store.finish_migration(record_id, "failed", {"error": str(exc)}, [], str(exc))
            return {"id": record_id, "status": "failed", "error": str(exc), **params}
        dest = self.session.hypervisor(destination).lookup(vm)
        stats = dest.job_stats(completed=True) if dest else {}
        result = {**params, **completed_figures(stats), "source": source,
                  "wall_time_ms": round((time.monotonic() - started) * 1000)}
        self.store.set_vm_node(vm, destination)
        self.store.finish_migration(record_id, "completed", result, [])
        self.session.hypervisor(source).delete_volume(POOL, overlay_name(vm))
        return {"id": record_id, "status": "completed", **result}

    def cleanup(self, vm: str, users: list[str]) -> None:
        """Overlays of vm and the users' replicas, on every node."""
        for node in sorted(self.session.fleet.nodes):
            hv = self.session.hypervisor(node)
            hv.delete_volume(POOL, overlay_name(vm))
            for user in users:
                hv.delete_volume(POOL, base_name(user))
