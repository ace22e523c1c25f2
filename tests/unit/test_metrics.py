"""Orchestrator exporter: figures from a real store on disk, injected lab counters, failing
sources as `edgeiot_exporter_source_up 0`, and a real scrape over loopback."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import libvirt
import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from agent.host.collectors import LibvirtCollector, SystemCollector
from orchestrator.commands.metrics import parse_listen
from orchestrator.errors import UserError
from orchestrator.metrics import OrchestratorCollector, histogram
from orchestrator.store import Store, VmRecord
from tests.unit.test_host_agent import FakePs

DASHBOARD = Path(__file__).resolve().parents[2] / "monitoring/grafana/dashboards/edgeiot.json"


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "records.sqlite"
    store = Store(path)
    for status, total_ms, down_ms, err in (("completed", 4030, 176, 12.5),
                                           ("completed", 900, 20, None),
                                           ("failed", None, None, None)):
        mid = store.start_migration("proxy-1", "fog1", "fog2", {}, None, 1)
        store.finish_migration(mid, status, {"total_time_ms": total_ms, "downtime_ms": down_ms,
                                             "prediction_error_pct": err,
                                             "transferred_bytes": 1000}, [])
    running = store.start_migration("proxy-2", "fog2", "fog3", {}, None, 1)
    store.db.execute("INSERT INTO samples VALUES (?,?,?)",
                     (running, 0, '{"dirty_rate_pages_s": 100, "bandwidth_bps": 5000000,'
                                  ' "remaining_bytes": 42}'))
    store.add_vm(VmRecord("proxy-1", "u1", "fog2", 128, 1, None, "52:54:00:00:00:01"))
    store.add_vm(VmRecord("app-1", "u2", "fog2", 128, 1, None, "52:54:00:00:00:02",
                          role="app"))
    store.add_event("decision", "proxy-1", {"verdict": "migrate"})
    store.add_event("decision", "proxy-2", {"verdict": "stay"})
    store.add_event("decision", "proxy-3", {"verdict": "stay"})
    store.add_event("energy", "fog1", {"green_joules": 10.0, "grid_joules": 5.0})
    store.add_event("energy", "fog1", {"green_wh": 1.0, "grid_joules": 7.0})
    store.close()
    return path


def collect(collector):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in registry.collect() for s in f.samples}


def test_figures_from_the_records(store_path):
    core = {"fog1": {"to_core": 10, "from_core": 20}}
    got = collect(OrchestratorCollector(lambda: Store(store_path), lambda: core))
    assert got[("edgeiot_migrations_total", (("status", "completed"),))] == 2
    assert got[("edgeiot_migrations_total", (("status", "failed"),))] == 1
    assert got[("edgeiot_migrations_total", (("status", "aborted"),))] == 0
    assert got[("edgeiot_migrations_running", ())] == 1
    assert got[("edgeiot_migration_duration_seconds_count", ())] == 2
    assert got[("edgeiot_migration_duration_seconds_sum", ())] == pytest.approx(4.93)
    assert got[("edgeiot_migration_duration_seconds_bucket", (("le", "1.0"),))] == 1
    assert got[("edgeiot_migration_downtime_seconds_bucket", (("le", "0.025"),))] == 1
    assert got[("edgeiot_migration_prediction_error_ratio_sum", ())] == pytest.approx(0.125)
    assert got[("edgeiot_migration_transferred_bytes_total", ())] == 2000
    run = (("destination", "fog3"), ("source", "fog2"), ("vm", "proxy-2"))
    assert got[("edgeiot_migration_dirty_rate_bytes_per_second", run)] == 100 * 4096
    assert got[("edgeiot_migration_bandwidth_bytes_per_second", run)] == 5e6
    assert got[("edgeiot_decisions_total", (("verdict", "stay"),))] == 2
    assert got[("edgeiot_vms", (("node", "fog2"), ("role", "app")))] == 1
    # energy events are per run: the counter sums them (10 J + 1 Wh, 5 J + 7 J)
    assert got[("edgeiot_energy_joules_total", (("node", "fog1"), ("source", "green")))] \
        == 3610
    assert got[("edgeiot_energy_joules_total", (("node", "fog1"), ("source", "grid")))] == 12
    assert got[("edgeiot_core_link_bytes_total", (("direction", "from_core"), ("node", "fog1")))] \
        == 20
    assert got[("edgeiot_exporter_source_up", (("source", "store"),))] == 1


def test_failing_sources_never_fail_the_scrape(tmp_path):
    def broken_store():
        raise OSError("disk gone")

    def broken_lab():
        raise RuntimeError("ip failed")

    got = collect(OrchestratorCollector(broken_store, broken_lab))
    assert got[("edgeiot_exporter_source_up", (("source", "store"),))] == 0
    assert got[("edgeiot_exporter_source_up", (("source", "lab"),))] == 0


def test_histogram_is_cumulative():
    family = histogram("x_seconds", "x", [0.5, 1.5, 3.0], (1.0, 2.0))
    values = {s.labels.get("le"): s.value for s in family.samples if s.name == "x_seconds_bucket"}
    assert values == {"1.0": 1, "2.0": 2, "+Inf": 3}


def test_parse_listen_refuses_bad_input():
    assert parse_listen("127.0.0.1:9177") == ("127.0.0.1", 9177)
    for bad in ("localhost:9177", "127.0.0.1", "127.0.0.1:99999"):
        with pytest.raises(UserError):
            parse_listen(bad)


def test_real_scrape_over_loopback(store_path):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OrchestratorCollector(lambda: Store(store_path)))
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:  # the HTTP server scrapes from its own thread: the store opens per scrape
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    finally:
        server.shutdown()
        thread.join(5)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["edgeiot_migrations"].type == "counter"
    assert families["edgeiot_migration_downtime_seconds"].type == "histogram"
    assert "edgeiot_migrations_total" in text


def test_sdn_core_classes_are_exported_and_a_dead_controller_shows_as_down():
    from prometheus_client import CollectorRegistry, generate_latest

    from orchestrator.metrics import OrchestratorCollector, core_class_families

    stats = {"classes": {"migration": {"bytes": 1000, "packets": 3},
                         "raw": {"bytes": 20, "packets": 1}}}
    byte_family, packet_family = core_class_families(stats)
    assert {s.labels["class"]: s.value for s in byte_family.samples
            if s.name.endswith("_total")} == {"migration": 1000.0, "raw": 20.0}
    assert len(packet_family.samples) >= 2

    def dead() -> dict:
        raise OSError("connection refused")

    registry = CollectorRegistry(auto_describe=False)
    registry.register(OrchestratorCollector(lambda: (_ for _ in ()).throw(OSError("no db")),
                                            core_classes=dead))
    text = generate_latest(registry).decode()
    assert 'edgeiot_exporter_source_up{source="sdn_controller"} 0.0' in text


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def test_every_dashboard_metric_is_exported(store_path):
    """Each series a dashboard expression names is produced by the exporter or the host
    agent (names as scraped: `_total`, `_bucket`, …), so a rename cannot leave a panel
    empty unnoticed; the lab test checks the expressions return data from a Prometheus."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OrchestratorCollector(lambda: Store(store_path),
                                            lambda: {"fog1": {"to_core": 1, "from_core": 2}}))
    registry.register(SystemCollector("fog1", FakePs()))
    registry.register(LibvirtCollector("fog1", lambda: libvirt.open("test:///default")))
    exported = {s.name for f in registry.collect() for s in f.samples}
    exprs = dashboard_exprs()
    named = {m for e in exprs for m in re.findall(r"\bedgeiot_\w+", e)}
    assert len(exprs) >= 15 and named
    assert named <= exported, sorted(named - exported)
    titles = {p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]
              if p["type"] == "row"}
    assert titles == {"Migrations", "Core traffic", "Predictor accuracy", "Fog node load",
                      "Energy"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus)")
def test_every_dashboard_expression_parses_as_promql(tmp_path):
    """promtool checks each expression offline, as a recording rule."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"edgeiot:dashboard_expr_{i}", "expr": e}
        for i, e in enumerate(dashboard_exprs())]}]}
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
