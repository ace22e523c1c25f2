"""Fog nodes of a real lab, read from an Ansible-style INI inventory.

    [fog_nodes]
    fog1 ansible_host=192.0.2.11 libvirt_uri=qemu+tls://fog1.lab.example/system vm_bridge=br0

Only the `fog_nodes` group becomes fog nodes here; other groups (cloud, orchestrator,
monitoring) belong to the deploy playbooks. Parsing is pure; errors name the line.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.fog.node import FogNode

NODE_GROUP = "fog_nodes"
KNOWN_NODE_VARS = {"ansible_host", "ansible_user", "ansible_port", "ansible_python_interpreter",
                   "libvirt_uri", "vm_bridge", "image_dir", "domain_type", "memory_mib",
                   "energy", "vm_network", "gateway"}


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
            group_vars.setdefault(group[:-5], {})[key.strip()] = value.strip()
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
    address = host_vars.get("ansible_host", name)
    uri = host_vars.get("libvirt_uri", f"qemu+tls://{address}/system")
    facts: dict[str, object] = {k: host_vars[k] for k in ("energy", "vm_network", "gateway")
                                if k in host_vars}
    if "memory_mib" in host_vars:
        try:
            facts["memory_mib"] = int(host_vars["memory_mib"])
        except ValueError as exc:
            raise UserError(f"{source}:{lineno}: memory_mib must be an integer") from exc
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
