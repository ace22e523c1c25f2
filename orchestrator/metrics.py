"""Prometheus exporter of the orchestrator: what the records say, read at scrape time.

The records (`orchestrator.store`) are the single source: migrations by outcome, their time,
downtime and prediction error as histograms, the live figures of running migrations (from
their newest job-stats sample, when the driver has stored one), decisions by verdict, VMs
per fog node and role, and energy. Core link bytes come from the lab when one is up. One
`Collector` with injected sources (a store opener, a core-bytes reader), so tests need no
lab; a failing source shows as `edgeiot_exporter_source_up{source} 0`, never as a failed
scrape. Names follow Prometheus conventions: base units in names, `_total` on counters.

Events read here (written by other parts of the orchestrator):
  kind "decision": data["verdict"] (e.g. "migrate", "stay").
  kind "energy":   subject = fog node; data["green_joules"], data["grid_joules"] (`*_wh`
                   accepted too): energy used over one run (a scenario replay writes one
                   per node); the counter is their sum per node and source.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from orchestrator.store import Store

log = logging.getLogger(__name__)

PAGE_BYTES = 4096  # NOTE: libvirt's memory_dirty_rate is in pages/s of the guest's page size
OUTCOMES = ("completed", "failed", "aborted", "cancelled", "lost")
DURATION_BUCKETS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
DOWNTIME_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ERROR_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)

StoreOpener = Callable[[], Store]
CoreBytes = Callable[[], dict[str, dict[str, int]]]


def histogram(name: str, doc: str, values: Iterable[float],
              buckets: Sequence[float]) -> HistogramMetricFamily:
    """A histogram family from raw observations; pure."""
    observed = sorted(values)
    cumulative = [(str(b), float(sum(1 for v in observed if v <= b))) for b in buckets]
    cumulative.append(("+Inf", float(len(observed))))
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], cumulative, sum_value=float(sum(observed)))
    return family


def _ms_values(records: Iterable[dict[str, Any]], *keys: str) -> list[float]:
    """Seconds from the first present millisecond field of each record's result."""
    values = []
    for record in records:
        result = record.get("result") or {}
        ms = next((result[k] for k in keys if result.get(k) is not None), None)
        if ms is not None:
            values.append(float(ms) / 1000.0)
    return values


def migration_families(migrations: list[dict[str, Any]],
                       newest_sample: Callable[[int], dict[str, Any] | None]) -> list[Metric]:
    """Every migration figure; pure apart from the injected sample lookup."""
    by_status = Counter(m["status"] for m in migrations)
    total = CounterMetricFamily("edgeiot_migrations", "Finished migrations by outcome.",
                                labels=["status"])
    for status in OUTCOMES:
        total.add_metric([status], float(by_status.get(status, 0)))
    running = [m for m in migrations if m["status"] == "running"]
    completed = [m for m in migrations if m["status"] == "completed"]
    families: list[Metric] = [
        total,
        GaugeMetricFamily("edgeiot_migrations_running", "Migrations in progress.",
                          value=float(len(running))),
        histogram("edgeiot_migration_duration_seconds", "Total time of completed migrations.",
                  _ms_values(completed, "total_time_ms", "wall_time_ms"), DURATION_BUCKETS),
        histogram("edgeiot_migration_downtime_seconds", "Downtime of completed migrations.",
                  _ms_values(completed, "downtime_ms"), DOWNTIME_BUCKETS),
        histogram("edgeiot_migration_prediction_error_ratio",
                  "|predicted - measured| / measured total time of completed migrations.",
                  [float(m["result"]["prediction_error_pct"]) / 100.0 for m in completed
                   if (m.get("result") or {}).get("prediction_error_pct") is not None],
                  ERROR_BUCKETS),
        _transferred(completed),
        *_running_figures(running, newest_sample),
        *predicted_vs_measured_families(completed, {
            str(m.get("vm")): int((newest_sample(m["id"]) or {}).get("iteration") or 0)
            for m in running}),
    ]
    return families


def _transferred(completed: list[dict[str, Any]]) -> CounterMetricFamily:
    sent = sum(int((m.get("result") or {}).get("transferred_bytes") or 0) for m in completed)
    return CounterMetricFamily("edgeiot_migration_transferred_bytes",
                               "Bytes sent by completed migrations.", value=float(sent))


def _running_figures(running: list[dict[str, Any]],
                     newest_sample: Callable[[int], dict[str, Any] | None]) -> list[Metric]:
    labels = ["vm", "source", "destination"]
    dirty = GaugeMetricFamily("edgeiot_migration_dirty_rate_bytes_per_second",
                              "Guest dirty rate of a running migration.", labels=labels)
    bandwidth = GaugeMetricFamily("edgeiot_migration_bandwidth_bytes_per_second",
                                  "Stream rate of a running migration.", labels=labels)
    remaining = GaugeMetricFamily("edgeiot_migration_remaining_bytes",
                                  "Memory left to send by a running migration.", labels=labels)
    for m in running:
        sample = newest_sample(int(m["id"]))
        if not sample:
            continue
        key = [m["vm"], m["source"], m["destination"]]
        dirty.add_metric(key, float(sample.get("dirty_rate_pages_s", 0)) * PAGE_BYTES)
        bandwidth.add_metric(key, float(sample.get("bandwidth_bps", 0)))
        remaining.add_metric(key, float(sample.get("remaining_bytes", 0)))
    return [dirty, bandwidth, remaining]


def decision_family(events: list[dict[str, Any]]) -> CounterMetricFamily:
    verdicts = Counter(str(e["data"].get("verdict", "unknown")) for e in events)
    family = CounterMetricFamily("edgeiot_decisions", "Migration decisions by verdict.",
                                 labels=["verdict"])
    for verdict, count in sorted(verdicts.items()):
        family.add_metric([verdict], float(count))
    return family


def vm_family(vms: Iterable[tuple[str, str]]) -> GaugeMetricFamily:
    """VMs per (fog node, role); role as recorded: "proxy" or "app" (application VM)."""
    family = GaugeMetricFamily("edgeiot_vms", "VMs the orchestrator placed, by node and role.",
                               labels=["node", "role"])
    for (node, role), count in sorted(Counter(vms).items()):
        family.add_metric([node, role], float(count))
    return family


def _joules(data: dict[str, Any], source: str) -> float | None:
    if data.get(f"{source}_joules") is not None:
        return float(data[f"{source}_joules"])
    if data.get(f"{source}_wh") is not None:
        return float(data[f"{source}_wh"]) * 3600.0
    return None


def energy_family(events: list[dict[str, Any]]) -> CounterMetricFamily:
    """Green and on-grid energy per fog node: the sum of every energy event (monotonic, as
    events are only ever added), so a counter."""
    totals: dict[tuple[str, str], float] = {}
    for event in events:
        for source in ("green", "grid"):
            value = _joules(event["data"], source)
            if value is not None:
                key = (str(event["subject"]), source)
                totals[key] = totals.get(key, 0.0) + value
    family = CounterMetricFamily("edgeiot_energy_joules",
                                 "Energy used per fog node, by source (green or grid).",
                                 labels=["node", "source"])
    for (node, source), value in sorted(totals.items()):
        family.add_metric([node, source], value)
    return family


def core_family(core: dict[str, dict[str, int]]) -> CounterMetricFamily:
    family = CounterMetricFamily("edgeiot_core_link_bytes",
                                 "Bytes over each fog node's core link, by direction.",
                                 labels=["node", "direction"])
    for node, counters in sorted(core.items()):
        for direction in ("to_core", "from_core"):
            if direction in counters:
                family.add_metric([node, direction], float(counters[direction]))
    return family


def core_class_families(stats: dict[str, Any]) -> list[CounterMetricFamily]:
    """The SDN core's per-class counters (OpenFlow flow stats of the classifier table)."""
    byte_family = CounterMetricFamily("edgeiot_core_class_bytes",
                                      "Bytes over the SDN core by traffic class.",
                                      labels=["class"])
    packet_family = CounterMetricFamily("edgeiot_core_class_packets",
                                        "Packets over the SDN core by traffic class.",
                                        labels=["class"])
    for name, counters in sorted(stats.get("classes", {}).items()):
        byte_family.add_metric([name], float(counters.get("bytes", 0)))
        packet_family.add_metric([name], float(counters.get("packets", 0)))
    return [byte_family, packet_family]


class OrchestratorCollector(Collector):
    """Reads the records (and the lab's core counters) at every scrape."""

    def __init__(self, open_store: StoreOpener, core_bytes: CoreBytes | None = None,
                 core_classes: Callable[[], dict[str, Any] | None] | None = None) -> None:
        self.open_store = open_store
        self.core_bytes = core_bytes
        self.core_classes = core_classes

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("edgeiot_exporter_source_up",
                               "1 if the source answered this scrape.", labels=["source"])
        families, ok = self._from_store()
        up.add_metric(["store"], 1.0 if ok else 0.0)
        if self.core_bytes is not None:
            core, ok = self._from_lab()
            families.extend(core)
            up.add_metric(["lab"], 1.0 if ok else 0.0)
        if self.core_classes is not None:
            classes, ok = self._from_controller()
            families.extend(classes)
            up.add_metric(["sdn_controller"], 1.0 if ok else 0.0)
        yield up
        yield from families

    def _from_store(self) -> tuple[list[Metric], bool]:
        try:
            store = self.open_store()
        except Exception as exc:  # noqa: BLE001 - a scrape must never fail
            log.warning("records unreadable: %s", exc)
            return [], False
        try:
            return [
                *migration_families(store.migrations(), lambda i: _newest(store, i)),
                decision_family(store.events("decision")),
                vm_family((v.node, v.role) for v in store.vms()),
                energy_family(store.events("energy")),
            ], True
        except Exception as exc:  # noqa: BLE001
            log.warning("records unreadable: %s", exc)
            return [], False
        finally:
            store.close()

    def _from_lab(self) -> tuple[list[Metric], bool]:
        assert self.core_bytes is not None
        try:
            return [core_family(self.core_bytes())], True
        except Exception as exc:  # noqa: BLE001
            log.warning("lab counters unreadable: %s", exc)
            return [], False


    def _from_controller(self) -> tuple[list[Metric], bool]:
        assert self.core_classes is not None
        try:
            stats = self.core_classes()
        except Exception as exc:  # noqa: BLE001 - a scrape must never fail
            log.warning("SDN controller unreadable: %s", exc)
            return [], False
        if stats is None:  # the lab has no SDN core (or is down): nothing to report
            return [], True
        return list(core_class_families(stats)), True


def _newest(store: Store, migration_id: int) -> dict[str, Any] | None:
    samples = store.samples(migration_id)
    return samples[-1] if samples else None


# ------------------------------------------------------------------ predicted beside measured
# What operators compare across orchestrators (KubeVirt exports a dozen migration
# series): for each VM's latest completed migration, its iterations and the predicted and
# measured time, bytes and downtime as gauges side by side, not only an error histogram.
# Labelled by VM only, so the series count is bounded by the VMs, not by the records.

PREDICTED_VS_MEASURED = (  # (series, what, predicted key, measured key in the result, scale)
    ("edgeiot_migration_time_seconds", "Total migration time", "total_time_s",
     "total_time_ms", 1e-3),
    ("edgeiot_migration_bytes", "Bytes the migration sent", "transferred_bytes",
     "transferred_bytes", 1.0),
    ("edgeiot_migration_downtime_last_seconds", "Downtime of the switch-over", "downtime_s",
     "downtime_ms", 1e-3),
)


def predicted_vs_measured_families(completed: list[dict[str, Any]],
                                   running_iterations: dict[str, int] | None = None
                                   ) -> list[Metric]:
    """Gauges {vm, source=predicted|measured} per quantity, and libvirt's iterations
    {vm, source}, from each VM's latest completed migration; a running migration's current
    iteration as source="live". Pure."""
    latest: dict[str, dict[str, Any]] = {}
    for record in sorted(completed, key=lambda m: m.get("id") or 0):
        latest[str(record.get("vm"))] = record
    iterations = GaugeMetricFamily("edgeiot_migration_iterations",
                                   "Pre-copy iterations of the VM's latest migration.",
                                   labels=["vm", "source"])
    families = {name: GaugeMetricFamily(name, f"{what} of the VM's latest migration, "
                                        "predicted beforehand and measured.",
                                        labels=["vm", "source"])
                for name, what, *_ in PREDICTED_VS_MEASURED}
    for vm, record in sorted(latest.items()):
        result, prediction = record.get("result") or {}, record.get("prediction") or {}
        _gauge(iterations, vm, prediction.get("iterations"), result.get("iterations"), 1.0)
        for name, _what, p_key, m_key, scale in PREDICTED_VS_MEASURED:
            _gauge(families[name], vm, prediction.get(p_key), result.get(m_key), scale)
    for vm, iteration in sorted((running_iterations or {}).items()):
        iterations.add_metric([vm, "live"], float(iteration))
    return [iterations, *families.values()]


def _gauge(family: GaugeMetricFamily, vm: str, predicted: Any, measured: Any,
           scale: float) -> None:
    for source, value, factor in (("predicted", predicted, 1.0), ("measured", measured, scale)):
        if isinstance(value, int | float) and not isinstance(value, bool):
            family.add_metric([vm, source], float(value) * factor)
