"""Domain XML built structurally from a `DomainSpec`, elements always in the same order.

Golden files in tests/data/ pin the output (regenerate with EDGEIOT_REGENERATE_GOLDEN=1);
unit tests also define every variant on libvirt's test driver to prove libvirt accepts it.
Proxy VMs boot the project's kernel and initramfs directly: no disk, so a live migration
moves memory and device state only.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from orchestrator.fog.node import validate_name

DOMAIN_TYPES = ("kvm", "qemu")
ANTI_SPOOF_FILTER = "clean-traffic"  # libvirt's stock nwfilter (libvirt-daemon-config-nwfilter)


@dataclass(frozen=True)
class Nic:
    """A bridged virtio NIC. With `ip`, the NIC carries libvirt's `clean-traffic` filter
    bound to that address and the NIC's MAC: the VM can send nothing else (no other source
    IP or MAC, no ARP for others, no non-IPv4 L2 traffic), so it cannot take another VM's,
    a device's or a fog node's identity on the lab segment."""

    bridge: str
    mac: str
    ip: str | None = None


@dataclass(frozen=True)
class Disk:
    """A file-backed virtio disk, e.g. a qcow2 overlay whose backing image (a proxy VM's
    static part) is pre-placed on replica nodes. libvirt detects the backing chain."""

    path: str
    target: str = "vdb"
    fmt: str = "qcow2"


@dataclass(frozen=True)
class DomainSpec:
    name: str
    uuid: str
    memory_mib: int
    vcpus: int
    domain_type: str  # "kvm" or "qemu" (TCG), from the node's probe
    kernel: str
    initrd: str
    # The guest kernel command line carries the VM's control key (edgeiot.key=): it is
    # in the XML (that is how it reaches the guest), never in a repr, log line or trace.
    cmdline: str = field(repr=False)
    nics: tuple[Nic, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    on_poweroff: str = "destroy"
    disks: tuple[Disk, ...] = ()

    def __post_init__(self) -> None:
        validate_name("VM", self.name)
        if self.domain_type not in DOMAIN_TYPES:
            raise ValueError(f"domain type must be one of {DOMAIN_TYPES}, got {self.domain_type}")
        if self.memory_mib <= 0 or self.vcpus <= 0:
            raise ValueError("memory and vcpus must be positive")


METADATA_NS = "https://edgeiot.example/xmlns/domain/1.0"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def to_xml(spec: DomainSpec) -> str:
    """The libvirt domain XML for a spec, indented, deterministic."""
    domain = ET.Element("domain", {"type": spec.domain_type})
    _sub(domain, "name", spec.name)
    _sub(domain, "uuid", spec.uuid)
    if spec.metadata:
        meta = _sub(domain, "metadata")
        edge = ET.SubElement(meta, f"{{{METADATA_NS}}}edgeiot")
        for key in sorted(spec.metadata):
            edge.set(key, spec.metadata[key])
    _sub(domain, "memory", str(spec.memory_mib), unit="MiB")
    _sub(domain, "currentMemory", str(spec.memory_mib), unit="MiB")
    _sub(domain, "vcpu", str(spec.vcpus), placement="static")
    _os(domain, spec)
    features = _sub(domain, "features")
    # NOTE: without ACPI and APIC the guest kernel logs an ACPI error at boot.
    _sub(features, "acpi")
    _sub(features, "apic")
    if spec.domain_type == "kvm":
        _sub(domain, "cpu", mode="host-passthrough", migratable="on")
    _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", spec.on_poweroff)
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")
    _devices(domain, spec)
    ET.register_namespace("edgeiot", METADATA_NS)
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"


def _os(domain: ET.Element, spec: DomainSpec) -> None:
    os_el = _sub(domain, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
    _sub(os_el, "kernel", spec.kernel)
    _sub(os_el, "initrd", spec.initrd)
    _sub(os_el, "cmdline", spec.cmdline)


def _filterref(iface: ET.Element, ip: str) -> None:
    """Anti-spoofing on one interface: `clean-traffic` with the VM's own address.

    NOTE: clean-traffic takes the MAC from the interface itself ($MAC); IP is given, not
    learnt, so the filter is complete from the first packet. The filter is looked up by
    name on whichever node defines the domain, so every node's libvirtd needs the nwfilter
    driver and the stock filters (a migration to a node without them fails at its start).
    """
    ref = _sub(iface, "filterref", filter=ANTI_SPOOF_FILTER)
    _sub(ref, "parameter", name="IP", value=ip)


def _devices(domain: ET.Element, spec: DomainSpec) -> None:
    devices = _sub(domain, "devices")
    _sub(devices, "emulator", "/usr/bin/qemu-system-x86_64")
    for disk in spec.disks:
        el = _sub(devices, "disk", type="file", device="disk")
        _sub(el, "driver", name="qemu", type=disk.fmt)
        _sub(el, "source", file=disk.path)
        _sub(el, "target", dev=disk.target, bus="virtio")
    for nic in spec.nics:
        iface = _sub(devices, "interface", type="bridge")
        _sub(iface, "mac", address=nic.mac)
        _sub(iface, "source", bridge=nic.bridge)
        _sub(iface, "model", type="virtio")
        if nic.ip:
            _filterref(iface, nic.ip)
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=f"/var/log/libvirt/qemu/{spec.name}-console.log", append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    _sub(devices, "memballoon", model="none")
