"""VM lifecycle across a fleet: create on a node, list where each runs, destroy.

The store keeps what the orchestrator decided (address, MAC, role); libvirt is the truth
about where a VM runs, so listing always asks every node.

Every VM gets its own control key when it is created: recorded (apart from the VM's row,
so no listing shows it), written on the guest kernel command line of the domain it is
defined with (out of band, and it migrates with the domain), and used by `agent()` to sign
every request to the VM's guest agent.
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.guest.edgeiot_agent import wire
from orchestrator.edge.capacity import placement
from orchestrator.errors import OrchestratorError, UserError
from orchestrator.fog.domain_xml import Disk, DomainSpec, Nic, to_xml
from orchestrator.fog.guest_agent import GuestAgent
from orchestrator.fog.node import FogNode, validate_name
from orchestrator.fog.probe import choose_domain_type
from orchestrator.fog.session import FleetSession
from orchestrator.images import GuestImage, guest_cmdline
from orchestrator.store import Store, VmRecord

MIN_MEMORY_MIB = 96
MAX_VCPUS = 64


def mac_for(vm_uuid: str, address: str | None) -> str:
    """A MAC in QEMU's 52:54:00 range: from the address's low 24 bits when there is one.

    NOTE: an address handed out again keeps its MAC, so peers' ARP caches stay right; a
    fresh MAC behind a reused address is unreachable until their entries expire.
    """
    if address:
        tail = ipaddress.IPv4Address(address).packed[-3:]
    else:
        tail = uuid.UUID(vm_uuid).bytes[-3:]
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


@dataclass
class VmService:
    session: FleetSession
    store: Store

    def create(self, name: str, node_name: str, memory_mib: int, vcpus: int = 1,
               role: str = "proxy", wait_s: float | None = 30.0,
               disks: tuple[Disk, ...] = ()) -> VmRecord:
        validate_name("VM", name)
        if memory_mib < MIN_MEMORY_MIB:
            raise UserError(f"--memory must be at least {MIN_MEMORY_MIB} MiB, got {memory_mib}")
        if not 1 <= vcpus <= MAX_VCPUS:
            raise UserError(f"--vcpus must be between 1 and {MAX_VCPUS}, got {vcpus}")
        node = self.session.fleet.node(node_name)
        if self.session.locate(name):
            raise UserError(f"VM {name!r} already exists")
        if self.store.vm(name) is not None:
            self._forget_stale(name)
        # Room and address are held against every other orchestrator process until the
        # domain runs and its row holds the address: two `vm create` at once never get one
        # address (and MAC) twice, nor both the last room on a node.
        with placement(self.session, self.store, name, node.name, memory_mib * 2**20) as at:
            record = self._plan(name, node, memory_mib, vcpus, role, at.address)
            key = wire.new_key()
            hv = self.session.hypervisor(node.name)
            hv.define_and_start(to_xml(replace(self._spec(record, node, key), disks=disks)))
            self.store.add_vm(record, key)
        if wait_s and record.address:
            try:
                self.agent(name).wait_ready(wait_s)
            except OrchestratorError:
                self.destroy(name)
                raise
        return record

    def _forget_stale(self, name: str) -> None:
        """A record whose VM no node has (it died with a lab that went down and came up
        again, or its host was rebuilt) is forgotten so the name can be used again; while
        any node is unreachable the VM may still be there, and the name stays taken."""
        if self.session.unreachable:
            nodes = ", ".join(sorted(self.session.unreachable))
            raise UserError(f"VM {name!r} is in the records and {nodes} cannot be reached "
                            "to tell whether it still runs there: refused")
        self.store.remove_vm(name)

    def _plan(self, name: str, node: FogNode, memory_mib: int, vcpus: int, role: str,
              address: str | None) -> VmRecord:
        vm_uuid = str(uuid.uuid4())
        return VmRecord(name=name, uuid=vm_uuid, node=node.name, memory_mib=memory_mib,
                        vcpus=vcpus, address=address, mac=mac_for(vm_uuid, address), role=role,
                        created_at=time.time())

    def _spec(self, record: VmRecord, node: FogNode, key: str) -> DomainSpec:
        fleet = self.session.fleet
        image = GuestImage(Path(node.image_dir))
        domain_type = self._domain_type(node, image)
        return DomainSpec(
            name=record.name, uuid=record.uuid, memory_mib=record.memory_mib,
            vcpus=record.vcpus, domain_type=domain_type,
            kernel=str(image.kernel), initrd=str(image.initrd),
            cmdline=guest_cmdline(record.name, record.address, fleet.prefix_len, fleet.gateway,
                                  record.role, tcg=domain_type == "qemu", key=key),
            # anti-spoofing: a NIC with an address sends only as that address and its MAC
            nics=(Nic(bridge=node.vm_bridge, mac=record.mac, ip=record.address),),
            metadata={"role": record.role},
        )

    def _domain_type(self, node: FogNode, image: GuestImage) -> str:
        if node.domain_type:
            return node.domain_type
        return choose_domain_type(self.session.hypervisor(node.name), image)

    def listing(self) -> list[dict[str, Any]]:
        """One row per VM, from every node, joined with the records."""
        records = {r.name: r for r in self.store.vms()}
        rows: dict[str, dict[str, Any]] = {}
        for hv in self.session.reachable():
            node = hv.node.name
            try:
                guests = hv.guests()
            except OrchestratorError as exc:
                self.session.unreachable[node] = str(exc)
                continue
            for guest in guests:
                state = guest.state()
                row = rows.setdefault(guest.name, {"name": guest.name, "nodes": [],
                                                   "state": state,
                                                   "memory_mib": guest.memory_bytes() >> 20})
                row["nodes"].append(node)
                if state == "running":
                    row["state"] = "running"
        for name, row in rows.items():
            record = records.get(name)
            row["node"] = ",".join(row.pop("nodes"))
            row["address"] = record.address if record else None
            row["role"] = record.role if record else "unmanaged"
        return [rows[k] for k in sorted(rows)]

    def destroy(self, name: str) -> list[str]:
        validate_name("VM", name)
        guests = self.session.locate(name)
        if not guests and self.store.vm(name) is None:
            raise UserError(f"unknown VM {name!r}")
        for guest in guests:
            guest.remove()
        self.store.remove_vm(name)
        return [g.node for g in guests]

    def address_of(self, name: str) -> str:
        record = self.store.vm(name)
        if record is None or not record.address:
            raise UserError(f"VM {name!r} has no known address")
        return record.address

    def key_of(self, name: str) -> str:
        """The VM's control key; a VM recorded before keys existed has none, and its guest
        (booted without one) cannot be authenticated: it has to be created again."""
        key = self.store.vm_key(name)
        if key is None:
            raise OrchestratorError(f"VM {name!r} has no control key in the records (created "
                                    "before authentication): destroy it and create it again")
        return key

    def agent(self, name: str, timeout_s: float = 3.0) -> GuestAgent:
        """A client of the VM's guest agent that signs with the VM's key."""
        address, key = self.address_of(name), self.key_of(name)
        return GuestAgent(address, self.session.fleet.policy, timeout_s=timeout_s, key=key)
