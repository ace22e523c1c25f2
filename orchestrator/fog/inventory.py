"""Fog nodes of a real lab, read from an Ansible-style INI inventory.

    [fog_nodes]
    fog1 ansible_host=192.0.2.11 libvirt_uri=qemu+tls://fog1.lab.example/system vm_bridge=br0

Only the `fog_nodes` group becomes fog nodes here; other groups (cloud, orchestrator,
monitoring) belong to the deploy playbooks. Parsing is pure; errors name the line.

Every value is checked here, at parse time (issue 13): some reach a guest's kernel command
line (`gateway`, the addresses of `vm_network`), a domain definition (`vm_bridge`,
`image_dir`) or a connection (`ansible_host`, `libvirt_uri`), where a space or an `=` would
smuggle in other parameters. Addresses are parsed with `ipaddress`, names match strict
patterns, and a bad value is a one-line error naming the file, line and variable.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Callable
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.fog.node import FogNode

NODE_GROUP = "fog_nodes"
MAX_MEMORY_MIB = 1 << 24
KNOWN_NODE_VARS = {"ansible_host", "ansible_user", "ansible_port", "ansible_python_interpreter",
                   "libvirt_uri", "vm_bridge", "image_dir", "domain_type", "memory_mib",
                   "energy", "vm_network", "gateway"}


HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
WORD = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
PATH = re.compile(r"^/[A-Za-z0-9_./+-]{0,255}$")
URI = re.compile(r"^[a-z0-9+]+://[A-Za-z0-9_.:@\[\]-]*/[A-Za-z0-9_./?=&+-]*$")


def _ipv4(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def _network(value: str) -> bool:
    try:
        ipaddress.IPv4Network(value)
    except ValueError:
        return False
    return True


def _port(value: str) -> bool:
    return value.isdigit() and 0 < int(value) < 65536


CHECKS: dict[str, tuple[Callable[[str], bool], str]] = {
    "ansible_host": (lambda v: _ipv4(v) or bool(HOSTNAME.match(v)),
                     "an IPv4 address or a host name"),
    "ansible_user": (lambda v: bool(USER.match(v)), "a user name"),
    "ansible_port": (_port, "a port number"),
    "ansible_python_interpreter": (lambda v: bool(PATH.match(v)), "an absolute path"),
    "libvirt_uri": (lambda v: bool(URI.match(v)), "a libvirt URI"),
    "vm_bridge": (lambda v: bool(IFNAME.match(v)), "an interface name"),
    "image_dir": (lambda v: bool(PATH.match(v)), "an absolute path"),
    "domain_type": (lambda v: v in ("kvm", "qemu"), "kvm or qemu"),
    "energy": (lambda v: bool(WORD.match(v)), "a word"),
    "vm_network": (_network, "an IPv4 network (a.b.c.d/n)"),
    "gateway": (_ipv4, "an IPv4 address"),
}


def check_value(key: str, value: str, where: str) -> str:
    """`value` of inventory variable `key`, or a one-line UserError naming `where`."""
    check = CHECKS.get(key)
    if check is not None and not check[0](value):
        raise UserError(f"{where}: invalid {key} {value[:80]!r}: expected {check[1]}")
    return value


def parse_inventory(text: str, source: str = "inventory") -> tuple[list[FogNode], dict[str, str]]:
    """(fog nodes, [all:vars]) of an INI inventory."""
    group: str | None = None
    nodes: list[FogNode] = []
    group_vars: dict[str, dict[str, str]] = {}
    host_lines: list[tuple[int, str, dict[str, str]]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise UserError(f"{source}:{lineno}: malformed group header {raw.strip()!r}")
            group = line[1:-1].strip()
            continue
        if group is None:
            raise UserError(f"{source}:{lineno}: host line outside any group")
        if group.endswith(":vars"):
            key, sep, value = line.partition("=")
            if not sep:
                raise UserError(f"{source}:{lineno}: expected key=value in [{group}]")
            key, value = key.strip(), value.strip()
            check_value(key, value, f"{source}:{lineno}")
            group_vars.setdefault(group[:-5], {})[key] = value
        elif group == NODE_GROUP:
            name, host_vars = _host_line(line, source, lineno)
            host_lines.append((lineno, name, host_vars))
    defaults = {**group_vars.get("all", {}), **group_vars.get(NODE_GROUP, {})}
    for lineno, name, host_vars in host_lines:
        nodes.append(_node(name, {**defaults, **host_vars}, source, lineno))
    if not nodes:
        raise UserError(f"{source}: no hosts in group [{NODE_GROUP}]")
    return nodes, group_vars.get("all", {})


def _host_line(line: str, source: str, lineno: int) -> tuple[str, dict[str, str]]:
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UserError(f"{source}:{lineno}: {exc}") from exc
    host_vars: dict[str, str] = {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep:
            raise UserError(f"{source}:{lineno}: expected key=value, got {word!r}")
        host_vars[key] = value
    return words[0], host_vars


def _node(name: str, host_vars: dict[str, str], source: str, lineno: int) -> FogNode:
    unknown = set(host_vars) - KNOWN_NODE_VARS
    if unknown:
        raise UserError(f"{source}:{lineno}: unknown variable(s) {', '.join(sorted(unknown))}")
    for key, value in host_vars.items():
        check_value(key, value, f"{source}:{lineno}")
    address = host_vars.get("ansible_host", name)
    uri = host_vars.get("libvirt_uri", f"qemu+tls://{address}/system")
    facts: dict[str, object] = {k: host_vars[k] for k in ("energy", "vm_network", "gateway")
                                if k in host_vars}
    if "memory_mib" in host_vars:
        try:
            facts["memory_mib"] = int(host_vars["memory_mib"])
        except ValueError as exc:
            raise UserError(f"{source}:{lineno}: memory_mib must be an integer") from exc
        if not 0 < int(facts["memory_mib"]) <= MAX_MEMORY_MIB:  # type: ignore[call-overload]
            raise UserError(f"{source}:{lineno}: memory_mib must be between 1 and "
                            f"{MAX_MEMORY_MIB}")
    try:
        return FogNode(name=name, uri=uri, address=address,
                       vm_bridge=host_vars.get("vm_bridge", "br-vm"),
                       image_dir=host_vars.get("image_dir", "/var/lib/edgeiot/images"),
                       domain_type=host_vars.get("domain_type"), facts=facts)
    except UserError as exc:
        raise UserError(f"{source}:{lineno}: {exc}") from exc


def load_inventory(path: str) -> tuple[list[FogNode], dict[str, str]]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UserError(f"cannot read inventory {path}: {exc.strerror}") from exc
    return parse_inventory(text, source=path)
