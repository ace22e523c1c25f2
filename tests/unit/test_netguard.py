import ipaddress

import pytest

from orchestrator.errors import UnsafeDestination
from orchestrator.netguard import (
    LabNetwork,
    NetworkPolicy,
    check_destination,
    parse_route_device,
)

LAB = NetworkPolicy(labs=(LabNetwork(ipaddress.IPv4Network("10.77.0.0/16"), "eiot-core"),))


def routes(device):
    calls = []

    def lookup(address):
        calls.append(address)
        return device
    lookup.calls = calls
    return lookup


def test_lab_address_routed_via_the_bridge_is_allowed():
    lookup = routes("eiot-core")
    assert check_destination("10.77.0.12", LAB, lookup) == "10.77.0.12"
    assert lookup.calls == ["10.77.0.12"]


def test_lab_address_routed_elsewhere_is_refused():
    with pytest.raises(UnsafeDestination, match="not the lab bridge"):
        check_destination("10.77.1.5", LAB, routes("eth0"))


def test_loopback_needs_no_route_check():
    lookup = routes("eth0")
    assert check_destination("127.0.0.1", LAB, lookup) == "127.0.0.1"
    assert lookup.calls == []


@pytest.mark.parametrize("address", ["192.0.2.1", "10.78.0.1", "8.8.8.8", "192.168.1.1"])
def test_anything_else_is_refused(address):
    with pytest.raises(UnsafeDestination):
        check_destination(address, LAB, routes("eiot-core"))


def test_inventory_hosts_are_allowed_but_lab_addresses_still_checked():
    policy = NetworkPolicy(labs=LAB.labs, remote_hosts=frozenset({"192.0.2.50", "10.77.0.11"}))
    assert check_destination("192.0.2.50", policy, routes("eth0")) == "192.0.2.50"
    with pytest.raises(UnsafeDestination):
        check_destination("10.77.0.11", policy, routes("eth0"))


def test_parse_route_device():
    out = '[{"dst":"10.77.0.12","dev":"eiot-core","prefsrc":"10.77.0.1","flags":[],"uid":0}]'
    assert parse_route_device(out) == "eiot-core"
