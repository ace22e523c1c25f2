"""Replicas, pure parts: disk XML (golden + libvirt's test driver), volume XML, flags,
static-part content, figures; and the replay's pure helpers (trace, BS map, schedule)."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import numpy as np
import pytest

from orchestrator.edge import replicas as rp
from orchestrator.edge import scenario as sc
from orchestrator.errors import UserError
from orchestrator.fog.domain_xml import Disk, DomainSpec, Nic, to_xml
from orchestrator.fog.jobstats import parse_completed
from orchestrator.fog.migration import MigrationRequest, migration_flags, migration_params
from orchestrator.images import guest_cmdline
from orchestrator.model.traces import TraceError

DATA = Path(__file__).resolve().parents[1] / "data"
SPEC = DomainSpec(
    name="px-alice", uuid="2c5a3c1e-7d0b-4f59-9d53-0f5e2a1b9c02", memory_mib=128, vcpus=1,
    domain_type="qemu", kernel="/srv/images/vmlinuz", initrd="/srv/images/initrd.img",
    cmdline=guest_cmdline("px-alice", "10.77.1.3", 16),
    nics=(Nic("br-vm", "52:54:00:01:01:03"),), metadata={"role": "proxy"},
    disks=(Disk(f"{rp.POOL_PATH}/px-alice.qcow2", "vdb"),))


def test_disk_variant_matches_golden_file() -> None:
    xml = to_xml(SPEC)
    golden = DATA / "domain-proxy-disk-out.xml"
    if os.environ.get("EDGEIOT_REGENERATE_GOLDEN"):
        golden.write_text(xml)
    assert xml == golden.read_text()


def test_no_disks_means_no_disk_element() -> None:
    plain = DomainSpec(**{**SPEC.__dict__, "disks": ()})
    assert "<disk" not in to_xml(plain)


def test_libvirt_test_driver_accepts_disk_variant() -> None:
    conn = libvirt.open("test:///default")
    try:
        dom = conn.defineXML(to_xml(SPEC))
        desc = ET.fromstring(dom.XMLDesc(0))
        disk = desc.find("devices/disk")
        assert disk is not None and disk.find("target").get("dev") == "vdb"
        assert disk.find("driver").get("type") == "qcow2"
        dom.undefine()
    finally:
        conn.close()


def test_volume_xml_shapes() -> None:
    raw = ET.fromstring(rp.raw_volume_xml("static-a.raw", 1024))
    assert raw.findtext("name") == "static-a.raw" and raw.findtext("capacity") == "1024"
    assert raw.find("target/format").get("type") == "raw"
    ov = ET.fromstring(rp.overlay_volume_xml("px-a.qcow2", 1024, "/p/static-a.raw"))
    assert ov.find("target/format").get("type") == "qcow2"
    assert ov.findtext("backingStore/path") == "/p/static-a.raw"
    assert ov.find("backingStore/format").get("type") == "raw"


def test_pool_and_volumes_on_test_driver() -> None:
    """The volume XML is what libvirt's storage API accepts (test driver's default pool)."""
    conn = libvirt.open("test:///default")
    try:
        pool = conn.storagePoolLookupByName("default-pool")
        vol = pool.createXML(rp.raw_volume_xml("static-t.raw", 4096), 0)
        assert vol.info()[1] == 4096
        vol.delete(0)
    finally:
        conn.close()


def test_flags_incremental_vs_full() -> None:
    inc_req, full_req = rp.storage_request("vm", "fog2", True), rp.storage_request("vm", "fog2",
                                                                                   False)
    inc, full = migration_flags(inc_req), migration_flags(full_req)
    inc_flag, disk_flag = libvirt.VIR_MIGRATE_NON_SHARED_INC, libvirt.VIR_MIGRATE_NON_SHARED_DISK
    assert inc & inc_flag and not inc & disk_flag
    assert full & disk_flag and not full & inc_flag
    for f in (inc, full):
        assert f & libvirt.VIR_MIGRATE_LIVE and f & libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    assert migration_params(inc_req) == {libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS: ["vdb"]}
    assert not migration_flags(MigrationRequest("vm", "fog2")) & (inc_flag | disk_flag)


def test_static_part_is_deterministic_and_incompressible() -> None:
    import zlib
    a = rp.static_part("alice", 100_000)
    assert len(a) == 100_000 and a == rp.static_part("alice", 100_000)
    assert a != rp.static_part("bob", 100_000)
    assert len(zlib.compress(a[:8192])) > 4096  # not zeros


def test_disk_bytes_come_from_the_completed_job() -> None:
    final = parse_completed({"data_processed": 15, "disk_processed": 5, "downtime": 7}, [])
    assert (final.transferred_bytes, final.disk_bytes, final.downtime_ms) == (15, 5, 7)


def test_unknown_storage_mode_is_refused() -> None:
    with pytest.raises(UserError, match="--storage"):
        MigrationRequest("vm", "fog2", storage="some")


def test_parse_small_trace_and_schedule() -> None:
    t = sc.parse_small_trace(["user,minute,bs_id", "0,0,0", "0,1,1", "1,0,2", "1,1,2"])
    assert t.users == ("u0", "u1") and t.n_minutes == 2
    assert sc.roam_schedule(t) == [(0, "u0", "0"), (0, "u1", "2"), (1, "u0", "1")]
    with pytest.raises(TraceError, match="expected 1"):
        sc.parse_small_trace(["0,0,0", "0,2,1"])
    with pytest.raises(TraceError, match="different"):
        sc.parse_small_trace(["0,0,0", "0,1,1", "1,0,0"])


def test_bs_map_recorded_first_then_round_robin() -> None:
    m = sc.default_bs_map({"0", "1", "2", "10"}, ["fog1", "fog2"], {"1": "fog9"})
    assert m == {"1": "fog9", "0": "fog1", "2": "fog2", "10": "fog1"}


def test_simulated_prediction_static_is_rate_times_remote_time() -> None:
    t = sc.parse_small_trace([f"0,{m},{b}" for m, b in enumerate([0, 1, 1, 1, 0])])
    places = sc.node_minutes(t, {"0": "fog1", "1": "fog2"}, ["fog1", "fog2"])
    assert places.tolist() == [[0, 1, 1, 1, 0]]
    cfg = sc.ReplayConfig(speedup=20.0, r_data_bps=1e6)
    sim = sc.simulate(places, 2, cfg, t_mig_s=1.0, t_mig_replica_s=0.5)
    assert sim["static"]["core_bytes"] == pytest.approx(3 * 3.0 * 1e6)  # 3 minutes × 3 s
    assert sim["dynamic"]["core_bytes"] <= sim["static"]["core_bytes"] + 1e9
    assert isinstance(np.asarray(places), np.ndarray)


def test_core_total_counts_each_crossing_once() -> None:
    assert sc.core_total({"a": {"to_core": 5, "from_core": 1}, "b": {"to_core": 1,
                                                                   "from_core": 5}}) == 6
