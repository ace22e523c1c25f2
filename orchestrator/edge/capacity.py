"""How much VM memory a node can still take, and room + an address for a new VM.

A node's declared capacity for VMs (`memory_mib` in the inventory, `--node-memory` in the
lab) minus the memory of the domains already there, when it is declared: like Nova, we
account for what we placed rather than trust MemFree, which counts reclaimable page cache as
used. Without a declaration, what the hypervisor reports free is the limit. Lab nodes share
one machine, so only a declared capacity tells them apart.

Across processes (issue 13): two orchestrators creating VMs at once both saw the same free
memory and the same free address. `placement()` makes both decisions transactional:
  * memory: admission per node is serialised by the same flock-held reservations incoming
    migrations use (`edge.migrate.inbound_reservation`), so VM creations and migrations see
    each other's promises until the domain exists, and a dead process's promise lapses;
  * address: taken from the records in one `BEGIN IMMEDIATE` transaction into the UNIQUE
    `allocations` table (store v5), so no two processes get the same address — and with it
    the same MAC, which is derived from the address.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from orchestrator.edge.reconcile import owner_alive, this_process
from orchestrator.errors import UserError
from orchestrator.fog.session import FleetSession
from orchestrator.store import Store

MIB = 2**20


def free_vm_memory_bytes(session: FleetSession, node: str) -> int:
    hv = session.hypervisor(node)
    capacity_mib = session.fleet.node(node).facts.get("memory_mib")
    if not capacity_mib:
        return hv.free_memory_bytes()
    used = sum(g.memory_bytes() for g in hv.guests() if g.is_active())
    return max(0, int(capacity_mib) * MIB - used)


def require_room(session: FleetSession, node: str, vm: str, memory_bytes: int,
                 reserved: Mapping[str, int] | None = None) -> None:
    """Refuse, before anything moves, to put a VM where its memory does not fit. `reserved`:
    memory other processes were promised at the node (vm → bytes); a promise whose domain
    is already there is counted once, as the domain."""
    pending = 0
    if reserved:
        present = {g.name for g in session.hypervisor(node).guests() if g.is_active()}
        pending = sum(m for other, m in reserved.items() if other != vm and other not in present)
    free = free_vm_memory_bytes(session, node) - pending
    if free < memory_bytes:
        promised = f", {pending // MIB} MiB of it promised elsewhere" if pending else ""
        raise UserError(f"{node} has not enough free memory for {vm} "
                        f"({memory_bytes // MIB} MiB needed, {max(free, 0) // MIB} MiB free"
                        f"{promised}): refused")


@dataclass(frozen=True)
class Placement:
    node: str
    address: str | None  # None when the fleet assigns no VM addresses


@contextmanager
def placement(session: FleetSession, store: Store, vm: str, node: str,
              memory_bytes: int) -> Iterator[Placement]:
    """Room at `node` and an address for new VM `vm`, held against every other process
    until the block ends; define the domain and record the VM inside it. The address's
    allocation ends with the block: by then the VM's row holds it (or it failed)."""
    from orchestrator.edge.migrate import inbound_reservation  # migrate imports this module

    state_dir = store.path.parent
    with inbound_reservation(state_dir, node, vm, memory_bytes,
                             lambda reserved: require_room(session, node, vm, memory_bytes,
                                                           reserved)):
        network = session.fleet.vm_network
        address = (store.allocate_address(vm, (str(h) for h in network.hosts()),
                                          this_process(), owner_alive)
                   if network is not None else None)
        try:
            yield Placement(node, address)
        finally:
            store.release_allocation(vm)
