import ipaddress
import socket
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from orchestrator.errors import UnsafeDestination
from orchestrator.netguard import (
    LabNetwork,
    NetworkPolicy,
    check_destination,
    parse_route_device,
    pinned_uri,
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


# --- no bypass (issue 13) ------------------------------------------------------------------

def test_a_name_that_resolves_into_a_lab_is_refused(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda host, *_a, **_k: [(socket.AF_INET, 1, 6, "", ("10.77.0.12", 0))])
    lookup = routes("eiot-core")
    with pytest.raises(UnsafeDestination, match="never by a name"):
        check_destination("fog1.evil.example", LAB, lookup)
    assert check_destination("10.77.0.12", LAB, lookup) == "10.77.0.12"


@pytest.mark.parametrize("uri, expected", [
    ("qemu+tcp://fog1.example:16509/system", "qemu+tcp://192.0.2.11:16509/system"),
    ("qemu+tcp://fog1.example/system", "qemu+tcp://192.0.2.11/system"),
    ("qemu+tls://fog1.example/system", "qemu+tls://fog1.example/system"),  # cert: the name
    ("qemu+ssh://root@fog1.example/system", "qemu+ssh://root@fog1.example/system"),
    ("test:///default", "test:///default"),
])
def test_libvirt_uris_connect_to_the_checked_address(uri, expected):
    assert pinned_uri(uri, "192.0.2.11") == expected


class Recorder(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self):  # noqa: N802
        Recorder.seen.append(self.path)
        body = b'{"locate_endpoint": null, "received": 0}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass


def test_internal_http_never_goes_through_a_proxy_from_the_environment(monkeypatch):
    from orchestrator.lab.controller.api import ControllerClient

    proxy = HTTPServer(("127.0.0.1", 0), Recorder)  # answers too, so a leak is visible
    api = HTTPServer(("127.0.0.1", 0), Recorder)
    for server in (proxy, api):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proxy_url = f"http://127.0.0.1:{proxy.server_address[1]}"
        for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "all_proxy"):
            monkeypatch.setenv(name, proxy_url)
        monkeypatch.setenv("no_proxy", "")
        assert urllib.request.getproxies()["http"] == proxy_url  # the trap is armed
        Recorder.seen = []
        client = ControllerClient(f"http://127.0.0.1:{api.server_address[1]}", timeout_s=5)
        assert client.locate_endpoint() == {"locate_endpoint": None, "received": 0}
        assert Recorder.seen == ["/locate-endpoint"]  # one request, straight to the API
        # What the old client did (urlopen's default opener, built fresh: it reads the env).
        leak = urllib.request.build_opener().open(
            f"http://127.0.0.1:{api.server_address[1]}/x", timeout=5)
        leak.close()
        assert Recorder.seen[-1].startswith("http://")  # the proxy got an absolute URL
    finally:
        proxy.shutdown()
        api.shutdown()


def test_the_controller_client_only_talks_to_loopback():
    from orchestrator.errors import UserError
    from orchestrator.lab.controller.api import ControllerClient

    for base in ("http://10.77.0.1:8080", "http://ctl.example:8080", "https://127.0.0.1:1"):
        with pytest.raises(UserError, match="loopback"):
            ControllerClient(base)


class _Conn:
    def setKeepAlive(self, *_args):  # noqa: N802 (libvirt's name)
        pass


@pytest.mark.parametrize("uri, dialled", [
    ("qemu+tcp://fog-a.example/system", "qemu+tcp://192.0.2.11/system"),
    ("qemu+tcp://fog-a.example:16509/system", "qemu+tcp://192.0.2.11:16509/system"),
    # TLS verifies the certificate for the name: a different peer fails there
    ("qemu+tls://fog-a.example/system?pkipath=/p", "qemu+tls://fog-a.example/system?pkipath=/p"),
])
def test_hypervisor_open_hands_libvirt_the_address_netguard_checked(monkeypatch, uri, dialled):
    """The name is resolved once, by netguard; libvirt dials the checked address (a
    second resolution could answer differently: DNS rebinding)."""
    from orchestrator.fog import hypervisor
    from orchestrator.fog.node import FogNode

    lookups, probed, opened = [], [], []

    def getaddrinfo(host, *_args, **_kwargs):
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.11", 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(hypervisor, "_probe_listener", lambda _n, address: probed.append(address))
    monkeypatch.setattr(hypervisor, "_ensure_event_loop", lambda: None)
    monkeypatch.setattr(hypervisor.libvirt, "open", lambda u: opened.append(u) or _Conn())
    node = FogNode(name="foga", uri=uri, address="fog-a.example")
    policy = NetworkPolicy(remote_hosts=frozenset({"fog-a.example"}))
    hv = hypervisor.Hypervisor.open(node, policy)
    assert opened == [dialled] and probed == ["192.0.2.11"] and lookups == ["fog-a.example"]
    assert hv.node is node  # the node keeps its URI (names in messages, TLS flags)
    assert hv.uri == dialled  # and a peer-to-peer migration to it is handed the same URI


def test_a_migration_hands_the_source_the_destinations_checked_uri():
    """The source libvirtd dials the destination itself: it gets the URI the orchestrator
    connected with (the checked address), never the name to resolve again."""
    from orchestrator.fog.hypervisor import Hypervisor
    from orchestrator.fog.migration import MigrationRequest, run_migration
    from orchestrator.fog.node import FogNode

    class _Guest:
        dialled: list[str] = []

        def migrate(self, uri, _params, _flags):
            self.dialled.append(uri)
            raise RuntimeError("stop here: only the URI matters")

        def job_stats(self):
            return {}

    node = FogNode(name="fogb", uri="qemu+tcp://fog-b.example/system", address="fog-b.example")
    destination = Hypervisor(node, _Conn(), "qemu+tcp://192.0.2.12/system")
    guest = _Guest()
    run_migration(guest, destination, MigrationRequest(vm="v", destination="fogb"),
                  clock=lambda: 0.0, sleep=lambda _s: None)
    assert guest.dialled == ["qemu+tcp://192.0.2.12/system"]
