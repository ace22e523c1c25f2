"""Prometheus Collectors of the host agent: psutil for the host, libvirt for its domains.

Both read their source in `collect()` (at scrape time), take the source as a constructor
argument (tests inject fakes or libvirt's `test:///default`), and never raise: a failing
part of a scrape is skipped and counted in `edgeiot_host_collector_errors_total`, and an
unreachable libvirt shows as `edgeiot_host_libvirt_up 0` with no domain series.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# virDomainState numbers → names (stable libvirt ABI; no libvirt import needed here)
DOMAIN_STATES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown",
                 5: "shutoff", 6: "crashed", 7: "pmsuspended"}


class SystemCollector(Collector):
    """CPU, memory, network and disk of this host, from a psutil-like module."""

    def __init__(self, node: str, ps: Any, filesystems: Iterable[str] = ("/",)) -> None:
        self.node = node
        self.ps = ps
        self.filesystems = tuple(filesystems)
        self.errors = 0

    def collect(self) -> Iterator[Metric]:
        for part in (self._cpu, self._memory, self._network, self._disk, self._filesystems):
            try:
                yield from list(part())
            except Exception as exc:  # noqa: BLE001 - a scrape must never fail
                self.errors += 1
                log.warning("host collector %s failed: %s", part.__name__, exc)
        errors = CounterMetricFamily("edgeiot_host_collector_errors",
                                     "Failed parts of host scrapes.", labels=["node"])
        errors.add_metric([self.node], self.errors)
        yield errors

    def _cpu(self) -> Iterator[Metric]:
        seconds = CounterMetricFamily("edgeiot_host_cpu_seconds", "CPU time by mode.",
                                      labels=["node", "mode"])
        for mode, value in self.ps.cpu_times()._asdict().items():
            seconds.add_metric([self.node, mode], float(value))
        yield seconds
        yield _gauge("edgeiot_host_cpu_count", "Logical CPUs.", self.node,
                     float(self.ps.cpu_count() or 0))
        load1, _load5, _load15 = self.ps.getloadavg()
        yield _gauge("edgeiot_host_load1", "1-minute load average.", self.node, float(load1))

    def _memory(self) -> Iterator[Metric]:
        mem = self.ps.virtual_memory()
        yield _gauge("edgeiot_host_memory_total_bytes", "Physical memory.", self.node,
                     float(mem.total))
        yield _gauge("edgeiot_host_memory_available_bytes", "Memory available for new work.",
                     self.node, float(mem.available))

    def _network(self) -> Iterator[Metric]:
        rx = CounterMetricFamily("edgeiot_host_network_receive_bytes",
                                 "Bytes received per interface.", labels=["node", "interface"])
        tx = CounterMetricFamily("edgeiot_host_network_transmit_bytes",
                                 "Bytes sent per interface.", labels=["node", "interface"])
        for name, counters in sorted(self.ps.net_io_counters(pernic=True).items()):
            rx.add_metric([self.node, name], float(counters.bytes_recv))
            tx.add_metric([self.node, name], float(counters.bytes_sent))
        yield rx
        yield tx

    def _disk(self) -> Iterator[Metric]:
        read = CounterMetricFamily("edgeiot_host_disk_read_bytes", "Bytes read per disk.",
                                   labels=["node", "disk"])
        written = CounterMetricFamily("edgeiot_host_disk_written_bytes",
                                      "Bytes written per disk.", labels=["node", "disk"])
        for name, counters in sorted((self.ps.disk_io_counters(perdisk=True) or {}).items()):
            read.add_metric([self.node, name], float(counters.read_bytes))
            written.add_metric([self.node, name], float(counters.write_bytes))
        yield read
        yield written

    def _filesystems(self) -> Iterator[Metric]:
        size = GaugeMetricFamily("edgeiot_host_filesystem_size_bytes", "Filesystem size.",
                                 labels=["node", "path"])
        free = GaugeMetricFamily("edgeiot_host_filesystem_free_bytes",
                                 "Filesystem space free.", labels=["node", "path"])
        for path in self.filesystems:
            usage = self.ps.disk_usage(path)
            size.add_metric([self.node, path], float(usage.total))
            free.add_metric([self.node, path], float(usage.free))
        yield size
        yield free


def _gauge(name: str, doc: str, node: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, doc, labels=["node"])
    gauge.add_metric([node], value)
    return gauge


def domain_devices(xml: str) -> tuple[list[str], list[str]]:
    """(interface target devices, disk target devices) of a domain's XML; pure."""
    root = ET.fromstring(xml)
    nics = [t.get("dev", "") for t in root.findall("./devices/interface/target")]
    disks = [t.get("dev", "") for t in root.findall("./devices/disk/target")]
    return [n for n in nics if n], [d for d in disks if d]


class LibvirtCollector(Collector):
    """Per-domain figures from libvirt (state, CPU, memory, vCPUs, NIC and disk bytes).
    `connect` opens a connection (kept between scrapes, reopened after a failure); it may
    raise, which reads as libvirt being down."""

    def __init__(self, node: str, connect: Callable[[], Any]) -> None:
        self.node = node
        self.connect = connect
        self._conn: Any = None

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self.connect()
        return self._conn

    def _drop(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close()
        except Exception:  # noqa: BLE001 - already broken
            pass
        self._conn = None

    def collect(self) -> Iterator[Metric]:
        try:
            families = self._read(self._connection())
            up = 1.0
        except Exception as exc:  # noqa: BLE001 - libvirt down must not fail the scrape
            log.warning("libvirt unreachable: %s", exc)
            self._drop()
            families, up = [], 0.0
        yield _gauge("edgeiot_host_libvirt_up", "1 if libvirt answered this scrape.",
                     self.node, up)
        yield from families

    def _read(self, conn: Any) -> list[Metric]:
        labels = ["node", "domain"]
        state = GaugeMetricFamily("edgeiot_domain_state", "1 for the domain's current state.",
                                  labels=[*labels, "state"])
        cpu = CounterMetricFamily("edgeiot_domain_cpu_seconds", "CPU time used by the domain.",
                                  labels=labels)
        memory = GaugeMetricFamily("edgeiot_domain_memory_bytes", "Memory of the domain.",
                                   labels=labels)
        vcpus = GaugeMetricFamily("edgeiot_domain_vcpus", "Virtual CPUs.", labels=labels)
        rx = CounterMetricFamily("edgeiot_domain_network_receive_bytes",
                                 "Bytes received per domain interface.",
                                 labels=[*labels, "interface"])
        tx = CounterMetricFamily("edgeiot_domain_network_transmit_bytes",
                                 "Bytes sent per domain interface.",
                                 labels=[*labels, "interface"])
        disk_read = CounterMetricFamily("edgeiot_domain_disk_read_bytes",
                                        "Bytes read per domain disk.", labels=[*labels, "disk"])
        disk_written = CounterMetricFamily("edgeiot_domain_disk_written_bytes",
                                           "Bytes written per domain disk.",
                                           labels=[*labels, "disk"])
        for dom in conn.listAllDomains(0):
            try:
                name = dom.name()
                st, _max_kib, mem_kib, nvcpu, cpu_ns = dom.info()
                nics, disks = domain_devices(dom.XMLDesc(0)) if st == 1 else ([], [])
                traffic = [(nic, dom.interfaceStats(nic)) for nic in nics]
                blocks = [(disk, dom.blockStats(disk)) for disk in disks]
            except Exception as exc:  # noqa: BLE001 - e.g. the domain left mid-scrape
                log.info("skipping a domain: %s", exc)
                continue
            state.add_metric([self.node, name, DOMAIN_STATES.get(st, "unknown")], 1.0)
            cpu.add_metric([self.node, name], cpu_ns / 1e9)
            memory.add_metric([self.node, name], mem_kib * 1024.0)
            vcpus.add_metric([self.node, name], float(nvcpu))
            for nic, stats in traffic:  # (rx_bytes, rx_packets, rx_errs, rx_drop, tx_bytes, …)
                rx.add_metric([self.node, name, nic], float(stats[0]))
                tx.add_metric([self.node, name, nic], float(stats[4]))
            for disk, stats in blocks:  # (rd_req, rd_bytes, wr_req, wr_bytes, errs)
                disk_read.add_metric([self.node, name, disk], float(stats[1]))
                disk_written.add_metric([self.node, name, disk], float(stats[3]))
        domains = GaugeMetricFamily("edgeiot_host_domains", "Domains defined on this host.",
                                    labels=["node"])
        domains.add_metric([self.node], float(len(state.samples)))
        return [domains, state, cpu, memory, vcpus, rx, tx, disk_read, disk_written]
