"""Host agent Collectors: a fake psutil, libvirt's test:///default driver, a broken libvirt,
and a real scrape over loopback parsed with prometheus_client's own parser."""

from __future__ import annotations

import argparse
import urllib.request
from collections import namedtuple

import libvirt
import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from agent.host.__main__ import build_registry, parse_listen
from agent.host.collectors import LibvirtCollector, SystemCollector, domain_devices

CpuTimes = namedtuple("CpuTimes", "user system idle")
Mem = namedtuple("Mem", "total available")
Nic = namedtuple("Nic", "bytes_sent bytes_recv")
Disk = namedtuple("Disk", "read_bytes write_bytes")
Usage = namedtuple("Usage", "total used free")


class FakePs:
    def cpu_times(self):
        return CpuTimes(10.0, 5.0, 100.0)

    def cpu_count(self):
        return 2

    def getloadavg(self):
        return (0.5, 0.4, 0.3)

    def virtual_memory(self):
        return Mem(8 << 30, 6 << 30)

    def net_io_counters(self, pernic):
        return {"br-vm": Nic(100, 200)}

    def disk_io_counters(self, perdisk):
        return {"vda": Disk(1000, 2000)}

    def disk_usage(self, path):
        return Usage(100, 40, 60)


def samples(registry):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in registry.collect() for s in f.samples}


def registry_of(*collectors):
    registry = CollectorRegistry(auto_describe=False)
    for c in collectors:
        registry.register(c)
    return registry


def test_system_collector_reads_psutil():
    got = samples(registry_of(SystemCollector("fog1", FakePs())))
    assert got[("edgeiot_host_cpu_seconds_total", (("mode", "idle"), ("node", "fog1")))] == 100
    assert got[("edgeiot_host_memory_available_bytes", (("node", "fog1"),))] == 6 << 30
    assert got[("edgeiot_host_network_receive_bytes_total",
                (("interface", "br-vm"), ("node", "fog1")))] == 200
    assert got[("edgeiot_host_disk_written_bytes_total", (("disk", "vda"), ("node", "fog1")))] \
        == 2000
    assert got[("edgeiot_host_filesystem_free_bytes", (("node", "fog1"), ("path", "/")))] == 60


def test_a_failing_psutil_call_is_counted_not_raised():
    class Broken(FakePs):
        def virtual_memory(self):
            raise OSError("no /proc")

    got = samples(registry_of(SystemCollector("fog1", Broken())))
    assert got[("edgeiot_host_collector_errors_total", (("node", "fog1"),))] == 1
    assert ("edgeiot_host_cpu_count", (("node", "fog1"),)) in got


def test_libvirt_collector_on_the_test_driver():
    got = samples(registry_of(LibvirtCollector("fog1", lambda: libvirt.open("test:///default"))))
    key = (("domain", "test"), ("node", "fog1"))
    assert got[("edgeiot_host_libvirt_up", (("node", "fog1"),))] == 1
    assert got[("edgeiot_domain_state", (*key, ("state", "running")))] == 1
    assert got[("edgeiot_domain_vcpus", key)] == 2
    assert got[("edgeiot_domain_memory_bytes", key)] == 2 << 30
    assert ("edgeiot_domain_network_receive_bytes_total",
            (("domain", "test"), ("interface", "testnet0"), ("node", "fog1"))) in got
    disk = (("disk", "vda"), ("domain", "test"), ("node", "fog1"))
    assert got[("edgeiot_domain_disk_read_bytes_total", disk)] > 0
    assert ("edgeiot_domain_disk_written_bytes_total", disk) in got


def test_unreachable_libvirt_is_up_zero_and_reconnects_later():
    attempts = []

    def connect():
        attempts.append(1)
        if len(attempts) == 1:
            raise libvirt.libvirtError("Failed to connect socket")
        return libvirt.open("test:///default")

    registry = registry_of(LibvirtCollector("fog1", connect))
    assert samples(registry)[("edgeiot_host_libvirt_up", (("node", "fog1"),))] == 0
    assert samples(registry)[("edgeiot_host_libvirt_up", (("node", "fog1"),))] == 1


def test_domain_devices():
    xml = ("<domain><devices><interface><target dev='vnet3'/></interface>"
           "<disk><target dev='vda'/></disk><interface/></devices></domain>")
    assert domain_devices(xml) == (["vnet3"], ["vda"])


def test_parse_listen():
    assert parse_listen("10.77.0.11:9100") == ("10.77.0.11", 9100)
    for bad in ("9100", ":9100", "host:0", "host:x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_listen(bad)


def test_real_scrape_over_loopback():
    registry = build_registry("fog1", "test:///default", ["/"])
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        port = server.server_address[1]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    finally:
        server.shutdown()
        thread.join(5)
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    assert families["edgeiot_host_cpu_seconds"].type == "counter"
    assert families["edgeiot_host_libvirt_up"].samples[0].value == 1
    assert families["edgeiot_domain_state"].samples[0].labels["domain"] == "test"
