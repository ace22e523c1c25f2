"""Domain XML: pinned by golden files, and accepted by libvirt's test driver."""

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from orchestrator.errors import UserError
from orchestrator.fog.domain_xml import DomainSpec, Nic, to_xml
from orchestrator.fog.probe import probe_spec
from orchestrator.images import GuestImage, guest_cmdline

DATA = Path(__file__).resolve().parents[1] / "data"

SPECS = {
    "proxy-tcg": DomainSpec(
        name="proxy-alice", uuid="2c5a3c1e-7d0b-4f59-9d53-0f5e2a1b9c01", memory_mib=256,
        vcpus=1, domain_type="qemu", kernel="/srv/images/vmlinuz",
        initrd="/srv/images/initrd.img",
        cmdline=guest_cmdline("proxy-alice", "10.77.1.2", 16, tcg=True, key="5a" * 32),
        nics=(Nic("br-vm", "52:54:00:1b:9c:01", ip="10.77.1.2"),), metadata={"role": "proxy"}),
    "app-kvm-2nics": DomainSpec(
        name="app-parknet", uuid="9f1d6a2e-3b4c-4d5e-8f70-112233445566", memory_mib=512,
        vcpus=2, domain_type="kvm", kernel="/k", initrd="/i", cmdline="console=ttyS0",
        nics=(Nic("br-vm", "52:54:00:44:55:66"), Nic("br-app", "52:54:00:44:55:67"))),
    "probe": probe_spec(GuestImage(Path("/srv/images"))),
}


@pytest.mark.parametrize("key", sorted(SPECS))
def test_matches_golden_file(key):
    spec = SPECS[key]
    if key == "probe":  # the probe's UUID is random: pin it for the comparison
        spec = DomainSpec(**{**spec.__dict__, "uuid": "00000000-1111-4222-8333-444444444444"})
    xml = to_xml(spec)
    golden = DATA / f"domain-{key}-out.xml"
    if os.environ.get("EDGEIOT_REGENERATE_GOLDEN"):
        golden.write_text(xml)
    assert xml == golden.read_text()


@pytest.mark.parametrize("key", sorted(SPECS))
def test_libvirt_test_driver_accepts_it(key):
    conn = libvirt.open("test:///default")
    try:
        dom = conn.defineXML(to_xml(SPECS[key]))
        assert dom.name() == SPECS[key].name
        described = dom.XMLDesc(0)
        assert SPECS[key].cmdline.split()[0] in described
        dom.undefine()
    finally:
        conn.close()


def test_a_nic_with_an_address_carries_clean_traffic_bound_to_it():
    root = ET.fromstring(to_xml(SPECS["proxy-tcg"]))
    (ref,) = root.findall("./devices/interface/filterref")
    assert ref.get("filter") == "clean-traffic"
    assert [(p.get("name"), p.get("value")) for p in ref] == [("IP", "10.77.1.2")]


def test_a_nic_without_an_address_has_no_filter():
    root = ET.fromstring(to_xml(SPECS["app-kvm-2nics"]))
    assert root.findall("./devices/interface/filterref") == []


@pytest.mark.parametrize("name", ["Proxy", "a_b", "-lead", "x" * 64, "", "a b", "ä"])
def test_invalid_names_are_refused_before_libvirt(name):
    with pytest.raises(UserError, match="invalid VM name"):
        DomainSpec(name=name, uuid="u", memory_mib=128, vcpus=1, domain_type="qemu",
                   kernel="k", initrd="i", cmdline="")


def test_63_characters_is_the_limit():
    DomainSpec(name="a" * 63, uuid="u", memory_mib=128, vcpus=1, domain_type="qemu",
               kernel="k", initrd="i", cmdline="")


def test_unknown_domain_type_is_refused():
    with pytest.raises(ValueError):
        DomainSpec(name="a", uuid="u", memory_mib=128, vcpus=1, domain_type="xen",
                   kernel="k", initrd="i", cmdline="")
