"""Device registry: globally unique IDs, data types, mobility and role; emulator launcher.

Why here: the orchestrator is the MME-like registrar. A device is recorded once (its ID is
globally unique: an EPC URN, a 96-bit EPC in hex, or an IPv6 address), belongs to a user,
and is pushed to that user's proxy VM so the proxy knows its profile (data type, group)
before the device's first record arrives.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

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
        self.store.add_device(device)
        return device

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


def launch_emulator(enter_argv: list[str], spec: dict[str, Any], spec_path: Path,
                    log_path: Path) -> subprocess.Popen[bytes]:
    """Start `python -m agent.devices SPEC` inside a fog node's namespaces.

    NOTE: the process lives in the node's network namespace, so the lab's teardown ends it
    (by pid) even if the caller crashes.
    """
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with log_path.open("ab") as log:
        return subprocess.Popen([*enter_argv, sys.executable, "-m", "agent.devices",
                                 str(spec_path)], cwd=REPO_ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
