"""Network safety: never let a connection to a lab address leave this machine.

A lab address with no local route follows the default route out of the box, and that traffic
is flagged. So before any process connects to an address we ask the kernel which device it
would use (`ip -j route get`) and refuse unless:
  * it is loopback, or
  * it lies in a lab subnet and its route is that lab's core bridge, or
  * the fleet comes from a real-host inventory that declares it (and it is no lab address).

No bypass (issue 13): a name is resolved once, here, and the caller connects to the address
returned (`pinned_uri` builds a libvirt URI from it for transports that do not verify the
peer's identity by name); a lab destination must be given as an address, never as a name
(a name could resolve elsewhere at connect time); internal HTTP never goes through a proxy
from the environment (`NO_PROXY_OPENER`).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from orchestrator.errors import OrchestratorError, UnsafeDestination
from orchestrator.runner import LocalRunner, Runner

RouteLookup = Callable[[str], str]
"""Address → name of the device the kernel would send it through."""


@dataclass(frozen=True)
class LabNetwork:
    subnet: ipaddress.IPv4Network
    bridge: str


@dataclass(frozen=True)
class NetworkPolicy:
    """Which destinations this process may connect to."""

    labs: tuple[LabNetwork, ...] = ()
    remote_hosts: frozenset[str] = field(default_factory=frozenset)


def parse_route_device(ip_json: str) -> str:
    """Device of the first route in `ip -j route get` output."""
    try:
        routes = json.loads(ip_json)
        return str(routes[0]["dev"])
    except (ValueError, LookupError, TypeError) as exc:
        raise OrchestratorError(f"cannot parse route lookup output: {ip_json[:80]!r}") from exc


def kernel_route_device(address: str, runner: Runner | None = None) -> str:
    result = (runner or LocalRunner()).run(["ip", "-j", "route", "get", address], check=False)
    if not result.ok:
        raise UnsafeDestination(f"no route to {address}: {result.stderr.strip()}")
    return parse_route_device(result.stdout)


def resolve(host: str) -> str:
    """IPv4 address of a host name, or the address itself."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return str(socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0])
    except OSError as exc:
        raise UnsafeDestination(f"cannot resolve {host}: {exc}") from exc


# urllib's default opener honours http_proxy/https_proxy/no_proxy: internal HTTP (the SDN
# controller's API, anything else on loopback or the lab) uses this one, which never does.
NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Transports whose peer proves its identity for the *name* (TLS certificate, SSH host key):
# their URI keeps the name. Every other transport connects to the checked address.
NAME_VERIFIED_SCHEMES = frozenset({"qemu+tls", "qemu+ssh", "qemu+libssh", "qemu+libssh2"})


def is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_destination(host: str, policy: NetworkPolicy,
                      route_device: RouteLookup = kernel_route_device) -> str:
    """Return the address to connect to, or raise UnsafeDestination. Call before connecting,
    and connect to the address returned, not to `host` again."""
    address = resolve(host)
    ip = ipaddress.ip_address(address)
    if ip.is_loopback:
        return address
    for lab in policy.labs:
        if ip in lab.subnet:
            if not is_address(host):
                raise UnsafeDestination(
                    f"refusing {host!r}: a lab destination is given by its address "
                    f"({address} now), never by a name that could resolve elsewhere later")
            device = route_device(address)
            if device != lab.bridge:
                raise UnsafeDestination(
                    f"refusing to connect to lab address {address}: its route is {device!r}, "
                    f"not the lab bridge {lab.bridge!r} (is the lab up?)")
            return address
    if host in policy.remote_hosts or address in policy.remote_hosts:
        return address
    raise UnsafeDestination(
        f"refusing to connect to {address}: neither loopback, a lab address, nor an inventory host")


def pinned_uri(uri: str, address: str) -> str:
    """`uri` with its host replaced by the checked `address`, unless its transport verifies
    the peer by name (then the name stays: a different peer fails that check)."""
    parts = urlsplit(uri)
    if not parts.hostname or parts.scheme in NAME_VERIFIED_SCHEMES:
        return uri
    host = f"[{address}]" if ":" in address else address
    netloc = host + (f":{parts.port}" if parts.port else "")
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def lab_networks(pairs: Sequence[tuple[str, str]]) -> tuple[LabNetwork, ...]:
    return tuple(LabNetwork(ipaddress.IPv4Network(s), b) for s, b in pairs)
