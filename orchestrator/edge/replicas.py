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
import random
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.edge.migrate import MigrationService
from orchestrator.edge.vms import VmService
from orchestrator.errors import OrchestratorError
from orchestrator.fog.domain_xml import Disk
from orchestrator.fog.migration import MigrationRequest
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


def storage_request(vm: str, destination: str, incremental: bool) -> MigrationRequest:
    """Memory plus the disk: only the overlay (incremental) or all of it (full)."""
    return MigrationRequest(vm=vm, destination=destination,
                            storage="incremental" if incremental else "full",
                            disks=(DISK_TARGET,))


@dataclass
class ReplicaService:
    session: FleetSession
    store: Store
    state_dir: Path
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
        self.place_base(user, [node])
        path = self._overlay(name, user, node)
        return VmService(self.session, self.store).create(
            name, node, memory_mib, wait_s=wait_s, disks=(Disk(path, DISK_TARGET),))

    def migrate(self, vm: str, destination: str, user: str,
                use_replica: bool = True) -> dict[str, Any]:
        """Storage + memory migration, incremental when the destination holds a replica.
        Recorded like every migration; the source's overlay is removed afterwards."""
        source = self.session.running_on(vm)
        incremental = use_replica and self.has_base(user, destination)
        if incremental:
            self._overlay(vm, user, destination)
        result = MigrationService(self.session, self.store, self.state_dir).migrate(
            storage_request(vm, destination, incremental))
        if result["status"] == "completed" and source:
            self.session.hypervisor(source[0]).delete_volume(POOL, overlay_name(vm))
        final = result.get("final") or {}
        return {**result, "storage": "incremental" if incremental else "full",
                "disk_bytes_sent": final.get("disk_bytes", 0),
                "memory_bytes_sent": (final.get("transferred_bytes") or 0)
                - final.get("disk_bytes", 0)}

    def cleanup(self, vm: str, users: list[str]) -> None:
        """Overlays of vm and the users' replicas, on every node."""
        for node in sorted(self.session.fleet.nodes):
            hv = self.session.hypervisor(node)
            hv.delete_volume(POOL, overlay_name(vm))
            for user in users:
                hv.delete_volume(POOL, base_name(user))
