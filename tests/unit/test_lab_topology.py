import pytest

from orchestrator.errors import UserError
from orchestrator.lab.network import parse_link_names, parse_netns_names, shaping_args
from orchestrator.lab.topology import LabSpec, plan


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
