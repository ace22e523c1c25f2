"""How much VM memory a node can still take.

A node's declared capacity for VMs (`memory_mib` in the inventory, `--node-memory` in the
lab) minus the memory of the domains already there, when it is declared: like Nova, we
account for what we placed rather than trust MemFree, which counts reclaimable page cache as
used. Without a declaration, what the hypervisor reports free is the limit. Lab nodes share
one machine, so only a declared capacity tells them apart.
"""

from __future__ import annotations

from orchestrator.errors import UserError
from orchestrator.fog.session import FleetSession

MIB = 2**20


def free_vm_memory_bytes(session: FleetSession, node: str) -> int:
    hv = session.hypervisor(node)
    capacity_mib = session.fleet.node(node).facts.get("memory_mib")
    if not capacity_mib:
        return hv.free_memory_bytes()
    used = sum(g.memory_bytes() for g in hv.guests() if g.is_active())
    return max(0, int(capacity_mib) * MIB - used)


def require_room(session: FleetSession, node: str, vm: str, memory_bytes: int) -> None:
    """Refuse, before anything moves, to put a VM where its memory does not fit."""
    free = free_vm_memory_bytes(session, node)
    if free < memory_bytes:
        raise UserError(f"{node} has not enough free memory for {vm} "
                        f"({memory_bytes // MIB} MiB needed, {free // MIB} MiB free): refused")
