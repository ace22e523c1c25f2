"""r_mig follows the lab core's migration meter: the migration's own cap and the prediction
made before it are one figure, just under the meter (pure functions, and MigrationService on
libvirt's test driver, where the migration itself fails but the cap and prediction stand)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from orchestrator.edge import scenario as sc
from orchestrator.edge.migrate import (
    WIRE_OVERHEAD,
    MigrationService,
    capped_request,
    core_meter_mbit,
    metered_bandwidth_mib_s,
    predictor_inputs,
)
from orchestrator.errors import UserError
from orchestrator.fleet import Fleet
from orchestrator.fog.migration import MigrationRequest
from orchestrator.fog.node import FogNode
from orchestrator.fog.session import FleetSession
from orchestrator.lab.controller.rules import meter_band
from orchestrator.netguard import NetworkPolicy
from orchestrator.store import open_store


def node(name: str, uri: str = "test:///default", **facts: Any) -> FogNode:
    return FogNode(name=name, uri=uri, address="", facts=facts)


@pytest.mark.parametrize("mbit", [9.0, 20, 80, 100, 1000])
def test_cap_is_the_largest_whole_mib_s_whose_frames_fit_the_meter(mbit):
    cap = metered_bandwidth_mib_s(mbit)
    kbps, _burst = meter_band(mbit)
    meter_bytes_s = kbps * 1000 / 8
    assert cap * 2**20 * WIRE_OVERHEAD <= meter_bytes_s
    assert (cap + 1) * 2**20 * WIRE_OVERHEAD > meter_bytes_s


def test_cap_figures():
    assert metered_bandwidth_mib_s(80) == 8  # the SDN lab test's meter: 9.5 MiB/s
    assert metered_bandwidth_mib_s(20) == 2  # the paper's 20 Mb/s
    assert metered_bandwidth_mib_s(1) == 1  # libvirt's least; the meter then polices
    for bad in (0, -5):
        with pytest.raises(UserError, match="> 0 Mbit/s"):
            metered_bandwidth_mib_s(bad)


def test_meter_comes_from_the_nodes_facts():
    assert core_meter_mbit([node("fog1"), node("fog2", migration_mbit=None)]) is None
    assert core_meter_mbit([node("fog1", migration_mbit=80),
                            node("fog2", migration_mbit=40)]) == 40


def test_user_bandwidth_wins_else_the_meter_else_uncapped():
    metered = [node("fog1", migration_mbit=80), node("fog2", migration_mbit=80)]
    mine = MigrationRequest("vm", "fog2", bandwidth_mib_s=3)
    assert capped_request(mine, metered) == (mine, "request")
    plain = MigrationRequest("vm", "fog2")
    assert capped_request(plain, [node("fog1"), node("fog2")]) == (plain, None)
    capped, source = capped_request(plain, metered)
    assert (capped.bandwidth_mib_s, source) == (8, "core meter")
    assert capped.vm == "vm" and capped.destination == "fog2"
    figures = {"memory_bytes": 128 << 20, "dirty_rate_pages_s": 0, "working_set_bytes": None}
    inputs = predictor_inputs(capped, figures, observed_bps=50 * 2**20)
    assert inputs is not None and inputs.bandwidth_bytes_s == 8 * 2**20  # not the history


def test_replay_r_mig_follows_the_meter():
    cfg = sc.ReplayConfig()
    assert sc.metered_config(cfg, [node("fog1"), node("fog2")]) == cfg
    metered = sc.metered_config(cfg, [node("fog1", migration_mbit=80)])
    assert metered.r_mig_bps == 8 * 2**20 and metered.speedup == cfg.speedup


DOMAIN = """<node>
  <domain type="test">
    <name>{vm}</name><uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
    <memory>131072</memory><vcpu>1</vcpu><os><type>hvm</type></os>
  </domain>
</node>"""


class Observer:
    def __init__(self) -> None:
        self.inputs: Any = None

    def started(self, inputs: Any, prediction: Any) -> None:
        self.inputs, self.prediction = inputs, prediction

    def sample(self, sample: Any) -> None:
        pass


def test_migrate_caps_and_predicts_with_the_meter_rate(tmp_path: Path):
    """A lab with a 80 Mbit/s meter: `migrate` without --bandwidth asks libvirt for 8 MiB/s
    and the prediction uses 8 MiB/s too (the test driver cannot migrate: the record fails,
    with the cap and the prediction in it)."""
    src, dst = tmp_path / "fog1.xml", tmp_path / "fog2.xml"
    src.write_text(DOMAIN.format(vm="capvm"))
    dst.write_text("<node/>")
    fleet = Fleet(nodes={"fog1": node("fog1", f"test://{src}", migration_mbit=80),
                         "fog2": node("fog2", f"test://{dst}", migration_mbit=80,
                                      memory_mib=512)},
                  policy=NetworkPolicy(), vm_network=ipaddress.IPv4Network("10.9.1.0/24"),
                  prefix_len=16, gateway=None)
    store = open_store(tmp_path)
    observer = Observer()
    try:
        with FleetSession(fleet) as session:
            result = MigrationService(session, store, tmp_path).migrate(
                MigrationRequest("capvm", "fog2"), observer)
        record = store.migrations(vm="capvm", limit=1)[0]
    finally:
        store.close()
    assert result["bandwidth_mib_s"] == 8 and result["bandwidth_from"] == "core meter"
    assert observer.inputs.bandwidth_bytes_s == 8 * 2**20
    assert result["status"] == "failed" and result["placement"] == ["fog1"]
    assert record["params"]["bandwidth_mib_s"] == 8
