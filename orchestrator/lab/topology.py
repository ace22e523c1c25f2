"""The lab's shape as pure data: names and addresses, derived from a few parameters.

Like Mininet's Topo, this is computed before anything is created; the builder
(`orchestrator.lab.builder`) turns it into namespaces, links and daemons. Every name carries
the lab's prefix so teardown can find exactly what a crashed run left behind.

Addresses (default subnet 10.77.0.0/16, all one L2 segment across the core bridge):
    10.77.0.1          gateway, on the core bridge in the root namespace
    10.77.0.10+i       fog node i's own address (libvirtd, migration stream)
    10.77.0.30+i       fog node i's devices namespace (where device emulators sit)
    10.77.0.100        the cloud node (with --cloud): a host behind a slower core link
    10.77.1.0/24 ...   VM addresses, handed out by the orchestrator
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from orchestrator.errors import UserError

PREFIX_PATTERN = re.compile(r"^[a-z][a-z0-9]{1,5}$")
MAX_NODES = 9
VM_BRIDGE = "br-vm"  # inside each node's namespace; the same name on every node
CORE_TYPES = ("bridge", "sdn")  # Linux bridge (default) or Open vSwitch + OpenFlow controller
DEVICE_LINK = "eth0"  # the devices namespace's only interface (a veth onto its node's br-vm)


@dataclass(frozen=True)
class LabSpec:
    """What the user asked for."""

    prefix: str = "eiot"
    nodes: int = 3
    subnet: str = "10.77.0.0/16"
    core_mbit: float | None = None
    core_delay_ms: float | None = None
    node_memory_mib: int | None = None  # VM memory each fog node offers (None: unlimited)
    cloud: bool = False
    cloud_mbit: float = 100.0  # the cloud sits behind a slower link than the fog nodes
    cloud_delay_ms: float | None = None
    core: str = "bridge"
    migration_mbit: float | None = None  # SDN core: meter on the migration class (None: none)

    def __post_init__(self) -> None:
        if not PREFIX_PATTERN.match(self.prefix):
            raise UserError(f"invalid lab prefix {self.prefix!r}: 2-6 of [a-z0-9], letter first")
        if not 1 <= self.nodes <= MAX_NODES:
            raise UserError(f"--nodes must be between 1 and {MAX_NODES}, got {self.nodes}")
        if self.core_mbit is not None and self.core_mbit <= 0:
            raise UserError(f"--core-mbit must be > 0, got {self.core_mbit}")
        if self.core_delay_ms is not None and self.core_delay_ms < 0:
            raise UserError(f"--core-delay-ms must be >= 0, got {self.core_delay_ms}")
        if self.node_memory_mib is not None and self.node_memory_mib <= 0:
            raise UserError(f"--node-memory must be > 0 MiB, got {self.node_memory_mib}")
        if self.cloud_mbit <= 0:
            raise UserError(f"--cloud-mbit must be > 0, got {self.cloud_mbit}")
        if self.cloud_delay_ms is not None and self.cloud_delay_ms < 0:
            raise UserError(f"--cloud-delay-ms must be >= 0, got {self.cloud_delay_ms}")
        if self.core not in CORE_TYPES:
            raise UserError(f"--core must be one of {', '.join(CORE_TYPES)}, got {self.core!r}")
        if self.migration_mbit is not None and self.migration_mbit <= 0:
            raise UserError(f"--migration-mbit must be > 0, got {self.migration_mbit}")
        if self.migration_mbit is not None and self.core != "sdn":
            raise UserError("--migration-mbit needs the SDN core (--core sdn)")
        net = self.network
        if net.prefixlen > 22 or not net.is_private:
            raise UserError(f"lab subnet {self.subnet} must be a private /22 or larger")

    @property
    def network(self) -> ipaddress.IPv4Network:
        try:
            return ipaddress.IPv4Network(self.subnet)
        except ValueError as exc:
            raise UserError(f"invalid lab subnet {self.subnet!r}: {exc}") from exc


@dataclass(frozen=True)
class DevicesPlan:
    """A fog node's devices namespace: the base station's access side.

    Why a namespace of their own: device emulators used to run in the node's namespace,
    with the node's address, so nothing on the segment could tell a device from the node
    (or from the node's libvirtd migrating to a peer). Here devices are a host of their
    own behind the node's VM bridge, with one address and MAC the node pins them to.
    """

    namespace: str  # eiot-fog1-dev
    node_veth: str  # eiot-fog1d: node end, in the node's namespace, enslaved to br-vm
    address: str
    mac: str


@dataclass(frozen=True)
class NodePlan:
    """One fog node: its user-facing name and every kernel object named for it."""

    name: str  # fog1
    namespace: str  # eiot-fog1
    core_veth: str  # eiot-fog1c: root-namespace end, enslaved to the core bridge
    node_veth: str  # eiot-fog1n: node end, enslaved to the node's VM bridge
    address: str
    kind: str = "fog"  # or "cloud"
    rate_mbit: float | None = None  # shaping of this node's core link, each direction
    delay_ms: float | None = None
    devices: DevicesPlan | None = None  # fog nodes only: the cloud has no base station


@dataclass(frozen=True)
class Topology:
    spec: LabSpec
    bridge: str
    gateway: str
    nodes: tuple[NodePlan, ...]
    vm_network: ipaddress.IPv4Network

    @property
    def prefix_len(self) -> int:
        return self.spec.network.prefixlen


def lab_mac(address: str) -> str:
    """A fixed, locally administered MAC derived from a lab IPv4 address (02:1e:a.b.c.d)."""
    packed = ipaddress.IPv4Address(address).packed
    return "02:1e:" + ":".join(f"{b:02x}" for b in packed)


def _node(prefix: str, name: str, address: str, kind: str, rate_mbit: float | None,
          delay_ms: float | None, devices_address: str | None = None) -> NodePlan:
    devices = None if devices_address is None else DevicesPlan(
        namespace=f"{prefix}-{name}-dev", node_veth=f"{prefix}-{name}d",
        address=devices_address, mac=lab_mac(devices_address))
    return NodePlan(name=name, namespace=f"{prefix}-{name}", core_veth=f"{prefix}-{name}c",
                    node_veth=f"{prefix}-{name}n", address=address, kind=kind,
                    rate_mbit=rate_mbit, delay_ms=delay_ms, devices=devices)


def plan(spec: LabSpec) -> Topology:
    """Names and addresses for a lab; pure."""
    net = spec.network
    base = net.network_address
    nodes = tuple(
        _node(spec.prefix, f"fog{i}", str(base + 10 + i), "fog", spec.core_mbit,
              spec.core_delay_ms, devices_address=str(base + 30 + i))
        for i in range(1, spec.nodes + 1)
    )
    if spec.cloud:
        nodes += (_node(spec.prefix, "cloud", str(base + 100), "cloud", spec.cloud_mbit,
                        spec.cloud_delay_ms),)
    return Topology(
        spec=spec,
        bridge=f"{spec.prefix}-core",
        gateway=str(base + 1),
        nodes=nodes,
        vm_network=ipaddress.IPv4Network(f"{base + 256}/24"),
    )
