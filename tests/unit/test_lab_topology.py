import ipaddress
import os
import re
import shutil
import subprocess

import pytest

from orchestrator.errors import UserError
from orchestrator.lab import firewall
from orchestrator.lab.network import parse_link_names, parse_netns_names, shaping_args
from orchestrator.lab.topology import LabSpec, lab_mac, plan


def test_plan_names_everything_with_the_prefix_and_fits_ifnamsiz():
    topo = plan(LabSpec(prefix="eiot", nodes=3))
    assert topo.bridge == "eiot-core"
    assert topo.gateway == "10.77.0.1"
    assert [n.address for n in topo.nodes] == ["10.77.0.11", "10.77.0.12", "10.77.0.13"]
    for node in topo.nodes:
        for name in (node.namespace, node.core_veth, node.node_veth):
            assert name.startswith("eiot-")
            assert len(name) <= 15  # IFNAMSIZ - 1
    assert str(topo.vm_network) == "10.77.1.0/24"


def test_plan_follows_the_subnet():
    topo = plan(LabSpec(prefix="lab2", nodes=2, subnet="10.88.0.0/16"))
    assert topo.gateway == "10.88.0.1"
    assert topo.nodes[1].address == "10.88.0.12"


@pytest.mark.parametrize("kwargs", [
    {"prefix": "EIOT"}, {"prefix": "e"}, {"prefix": "toolongname"}, {"prefix": "1ab"},
    {"nodes": 0}, {"nodes": 10}, {"core_mbit": 0}, {"core_delay_ms": -1},
    {"subnet": "8.8.8.0/22"}, {"subnet": "10.77.0.0/24"}, {"subnet": "nonsense"},
])
def test_bad_specs_are_refused(kwargs):
    with pytest.raises(UserError):
        LabSpec(**kwargs)


def test_shaping_args():
    assert shaping_args(None, None) == []
    assert shaping_args(240, None) == ["tbf", "rate", "240mbit", "burst", "120000",
                                       "latency", "100ms"]
    assert shaping_args(1, None)[4] == str(32 * 1024)  # never a bucket below 32 KiB
    assert shaping_args(None, 2.5) == ["netem", "delay", "2.5ms", "limit", "100000"]
    assert shaping_args(20, 1) == ["netem", "delay", "1ms", "rate", "20mbit", "limit", "100000"]


def test_parsers_of_ip_json_output():
    assert parse_netns_names("") == []
    assert parse_netns_names('[{"name":"eiot-fog2","id":1},{"name":"x"}]') == ["eiot-fog2", "x"]
    assert parse_link_names('[{"ifindex":1,"ifname":"lo"},{"ifname":"eiot-core"}]') == [
        "lo", "eiot-core"]


def test_cloud_node_sits_behind_its_own_slower_link():
    topo = plan(LabSpec(prefix="eiot", nodes=2, core_mbit=1000, cloud=True, cloud_mbit=50))
    fog, cloud = topo.nodes[0], topo.nodes[-1]
    assert [n.name for n in topo.nodes] == ["fog1", "fog2", "cloud"]
    assert (cloud.kind, cloud.address, cloud.namespace) == ("cloud", "10.77.0.100", "eiot-cloud")
    assert len(cloud.core_veth) <= 15
    assert (fog.rate_mbit, cloud.rate_mbit) == (1000, 50)


def test_a_subnet_already_routed_elsewhere_is_found():
    import ipaddress

    from orchestrator.lab.network import overlapping_routes

    routes = ('[{"dst":"default","gateway":"192.0.2.1","dev":"eth0"},'
              '{"dst":"192.0.2.0/24","dev":"eth0"},{"dst":"10.77.0.0/16","dev":"other-core"},'
              '{"dst":"10.80.1.5","dev":"tun0"}]')
    assert overlapping_routes(routes, ipaddress.IPv4Network("10.77.0.0/16")) == [
        "10.77.0.0/16 dev other-core"]
    assert overlapping_routes(routes, ipaddress.IPv4Network("10.80.0.0/16")) == [
        "10.80.1.5 dev tun0"]
    assert overlapping_routes(routes, ipaddress.IPv4Network("10.90.0.0/16")) == []


def test_bridge_macs_are_fixed_unicast_local_and_distinct_per_address():
    from orchestrator.lab.network import bridge_mac
    macs = {bridge_mac(f"10.70.0.{i}") for i in range(1, 255)}
    assert len(macs) == 254
    assert bridge_mac("10.70.0.12") == "02:1e:0a:46:00:0c"
    for mac in macs:
        first = int(mac[:2], 16)
        assert first & 0x02 and not first & 0x01  # locally administered, unicast
        assert not mac.startswith("fe:")  # never a libvirt tap's MAC


def test_processes_under_finds_a_process_by_a_path_in_its_command_line(tmp_path):
    import subprocess
    import sys

    from orchestrator.lab.builder import processes_under
    root = tmp_path / "labs" / "ecal"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                             f"{root}/fog1/libvirtd.pid"])
    try:
        assert proc.pid in processes_under(root)
        assert proc.pid not in processes_under(tmp_path / "labs" / "eca")  # a prefix only
    finally:
        proc.kill()
        proc.wait()


# --- the trust boundary: devices namespaces and the nft rulesets ---------------------------


def test_each_fog_node_has_a_devices_namespace_of_its_own_and_the_cloud_none():
    topo = plan(LabSpec(prefix="abcdef", nodes=9, cloud=True))
    fogs = [n for n in topo.nodes if n.kind == "fog"]
    cloud = next(n for n in topo.nodes if n.kind == "cloud")
    assert cloud.devices is None
    devices = [n.devices for n in fogs]
    assert all(d is not None for d in devices)
    assert [d.address for d in devices] == [f"10.77.0.{30 + i}" for i in range(1, 10)]
    assert [d.namespace for d in devices][0] == "abcdef-fog1-dev"
    infra = {topo.gateway, *(n.address for n in topo.nodes)}
    for dev in devices:
        assert dev.address not in infra
        assert ipaddress.IPv4Address(dev.address) not in topo.vm_network
        assert dev.node_veth.startswith("abcdef-") and len(dev.node_veth) <= 15
        assert dev.mac == lab_mac(dev.address)
    assert len({d.mac for d in devices}) == len(devices)


def test_only_infrastructure_may_open_connections_to_a_node():
    topo = plan(LabSpec(prefix="eiot", nodes=2, cloud=True))
    rules = firewall.node_guard(topo)
    assert rules.startswith("table inet eiot-guard {")
    accept = next(line for line in rules.splitlines() if "ip saddr" in line)
    assert set(re.findall(r"\d+\.\d+\.\d+\.\d+", accept)) == {
        "10.77.0.1", "10.77.0.11", "10.77.0.12", "10.77.0.100"}  # no device, no VM
    refuse = next(line for line in rules.splitlines() if "tcp dport" in line)
    for port in ("22", "9100", "16509", "16514", "49152-49215"):
        assert re.search(rf"[{{ ]{port}[,}} ]", refuse), port
    lines = rules.splitlines()
    assert lines.index(accept.rstrip("\n")) < lines.index(refuse)
    assert lines[lines.index(refuse) + 1].strip() == "counter name dropped drop"


def test_the_root_table_judges_nothing_but_what_arrives_on_the_lab_bridge():
    topo = plan(LabSpec(prefix="eiot", nodes=1))
    chain = firewall.root_guard(topo).split("chain input {")[1].splitlines()
    judged = [line.strip() for line in chain if line.strip()]
    assert judged[1] == 'iifname != "eiot-core" accept'  # first rule after the hook
    assert firewall.delete_root_guard_argv("eiot") == ["nft", "delete", "table", "inet",
                                                       "eiot-guard"]


def test_a_devices_veth_is_pinned_to_its_namespaces_mac_and_address():
    topo = plan(LabSpec(prefix="eiot", nodes=2, cloud=True))
    fog2, cloud = topo.nodes[1], topo.nodes[2]
    rules = firewall.device_antispoof(topo, fog2)
    drops = [line.strip() for line in rules.splitlines() if line.strip().endswith("drop")]
    assert drops and all(d.startswith('iifname "eiot-fog2d" ') for d in drops)
    assert "ether saddr != 02:1e:0a:4d:00:20" in rules
    assert "ip saddr != 10.77.0.32" in rules and "arp saddr ip != 10.77.0.32" in rules
    assert "arp saddr ether != 02:1e:0a:4d:00:20" in rules
    assert "ether type != { ip, arp }" in rules
    assert firewall.device_antispoof(topo, cloud) == ""
    assert firewall.node_ruleset(topo, cloud) == firewall.node_guard(topo)


def test_guard_counters_are_read_from_nft_json():
    captured = ('{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"counter": {"family": '
                '"inet", "name": "refused", "table": "eiot-guard", "handle": 2, "packets": 2, '
                '"bytes": 120}}, {"counter": {"family": "inet", "name": "dropped", "table": '
                '"eiot-guard", "handle": 3, "packets": 0, "bytes": 0}}]}')
    assert firewall.parse_counters(captured) == {"refused": 2, "dropped": 0}
    assert firewall.parse_counters("") == {}


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None,
                    reason="nft --check needs root and nftables")
@pytest.mark.parametrize("which", ["node", "root", "node-without-devices"])
def test_the_kernel_accepts_every_ruleset(tmp_path, which):
    """`nft --check` parses and validates against the kernel without applying anything."""
    topo = plan(LabSpec(prefix="echk", nodes=2, cloud=True))
    script = {"node": firewall.node_ruleset(topo, topo.nodes[0]),
              "root": firewall.root_guard(topo),
              "node-without-devices": firewall.node_ruleset(topo, topo.nodes[2])}[which]
    path = tmp_path / "rules.nft"
    path.write_text(script)
    done = subprocess.run(["nft", "--check", "-f", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
