"""Device registry: globally unique IDs, data types, mobility and role; emulator launcher.

Why here: the orchestrator is the MME-like registrar. A device is recorded once (its ID is
globally unique: an EPC URN, a 96-bit EPC in hex, or an IPv6 address), belongs to a user,
and is pushed to that user's proxy VM so the proxy knows its profile (data type, group)
before the device's first record arrives.

Each device also gets a credential (a key, agent.guest.edgeiot_agent.wire) when it is
added: recorded apart from the device's row (no listing shows it), given to every proxy
the device is registered on (`registration`) and to the device itself (the emulator's
spec, written readable by its owner only), so its `hello` can prove it is that device.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agent.devices.emulator import DEVICE_KEYS
from agent.guest.edgeiot_agent import wire
from agent.guest.edgeiot_agent.classify import DATA_TYPES
from orchestrator.errors import UserError
from orchestrator.store import Store

MOBILITY = ("static", "mobile")
ROLES = ("sensor", "actuator")
EPC_URN = re.compile(r"^urn:epc:id:(sgtin|sscc|sgln|grai|giai|gid):[A-Za-z0-9.*\-]{1,100}$")
EPC_HEX = re.compile(r"^[0-9A-Fa-f]{24}$")
GROUP = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
REPO_ROOT = Path(__file__).resolve().parents[2]


def validate_device_id(device_id: str) -> str:
    """The canonical ID, or UserError: EPC URN, EPC-96 as 24 hex digits, or IPv6."""
    if EPC_URN.match(device_id):
        return device_id
    if EPC_HEX.match(device_id):
        return device_id.upper()
    try:
        return str(ipaddress.IPv6Address(device_id))
    except ValueError:
        raise UserError(f"invalid device ID {device_id!r}: expected an EPC URN "
                        "(urn:epc:id:...), 24 hex digits (EPC-96) or an IPv6 address") from None


def validate_type(dtype: str) -> str:
    if dtype not in DATA_TYPES:
        raise UserError(f"unknown data type {dtype!r} (known: {', '.join(sorted(DATA_TYPES))})")
    return dtype


def profile(device: dict[str, Any]) -> dict[str, Any]:
    """What the proxy is told about a device."""
    return {"id": device["id"], "type": device["type"], "user": device["user"],
            "role": device["role"], "group": device.get("grp") or device["user"]}


def registration(device: dict[str, Any], key: str) -> dict[str, Any]:
    """What a proxy is told to serve a device: its profile and its credential."""
    return {**profile(device), "key": key}


class DeviceRegistry:
    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, device_id: str, user: str, dtype: str, mobility: str = "mobile",
            role: str = "sensor", bs: str | None = None,
            group: str | None = None) -> dict[str, Any]:
        """Validate and record a device; nothing is recorded if anything is wrong."""
        device_id = validate_device_id(device_id)
        validate_type(dtype)
        if mobility not in MOBILITY:
            raise UserError(f"--mobility must be one of {', '.join(MOBILITY)}")
        if role not in ROLES:
            raise UserError(f"--role must be one of {', '.join(ROLES)}")
        if group is not None and not GROUP.match(group):
            raise UserError(f"invalid group {group!r}: lowercase letters, digits and '-'")
        if self.store.user(user) is None:
            raise UserError(f"unknown user {user!r}: add it with 'orchestrator user add'")
        if self.get(device_id) is not None:
            raise UserError(f"device {device_id} is already registered")
        device = {"id": device_id, "user": user, "type": dtype, "mobility": mobility,
                  "role": role, "bs": bs, "grp": group}
        self.store.add_device(device, wire.new_key())
        return device

    def keys(self, ids: Iterable[str]) -> dict[str, str]:
        """device → credential for each of `ids`; a device recorded before credentials
        existed gets one now (the orchestrator hands it to the device and its proxy alike)."""
        wanted = sorted(set(ids))
        keys = self.store.device_keys(wanted)
        for device_id in wanted:
            if device_id not in keys:
                keys[device_id] = wire.new_key()
                self.store.set_device_key(device_id, keys[device_id])
        return keys

    def registrations(self, devices: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """`registration` of each device, with its credential."""
        devices = list(devices)
        keys = self.keys(d["id"] for d in devices)
        return [registration(d, keys[d["id"]]) for d in devices]

    def listing(self, user: str | None = None) -> list[dict[str, Any]]:
        return self.store.devices(user)

    def get(self, device_id: str) -> dict[str, Any] | None:
        return next((d for d in self.store.devices() if d["id"] == device_id), None)

    def require_actuator(self, device_id: str) -> dict[str, Any]:
        """The registered actuator `device_id`; UserError for an unknown one or a sensor."""
        device = self.get(device_id)
        if device is None:
            raise UserError(f"unknown device {device_id!r}")
        if device["role"] != "actuator":
            raise UserError(f"device {device_id} is a {device['role']}, not an actuator")
        return device


def spec_device_ids(spec: dict[str, Any]) -> list[str]:
    """The device IDs an emulator spec's sources emit as."""
    return [s[k] for s in spec.get("sources", ()) for k in DEVICE_KEYS if k in s]


def with_keys(spec: dict[str, Any], store: Store) -> dict[str, Any]:
    """`spec` with `"keys"` ({device: credential}) for every device its sources emit as
    (the emulator proves each device's identity with its own key)."""
    return {**spec, wire.SPEC_KEYS: DeviceRegistry(store).keys(spec_device_ids(spec))}


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only, from the first byte on (an
    existing file is tightened before it is rewritten)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(fd, 0o600)
        out.write(text)


def launch_emulator(enter_argv: list[str], spec: dict[str, Any], spec_path: Path,
                    log_path: Path) -> subprocess.Popen[bytes]:
    """Start `python -m agent.devices SPEC` behind a base station: `enter_argv` comes from
    the lab or fleet (in the lab, `Lab.devices_enter_argv(node)`: the node's devices
    namespace, which reaches VMs but no node's management port).

    The spec file is written mode 0600: it carries the devices' credentials (`keys`).

    NOTE: in the lab the process lives in a namespace the lab created, so the lab's
    teardown ends it (by pid) even if the caller crashes.
    """
    write_private(spec_path, json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with log_path.open("ab") as log:
        return subprocess.Popen([*enter_argv, sys.executable, "-m", "agent.devices",
                                 str(spec_path)], cwd=REPO_ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
