"""The real lab tier: one lab-in-a-box per test module, torn down even when tests fail.

Each module's lab has its own prefix, subnet and state directory, so a developer's own lab
(prefix eiot, 10.77.0.0/16) is never touched.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.errors import ExitStatus
from orchestrator.fleet import lab_fleet
from orchestrator.fog.guest_agent import GuestAgent
from orchestrator.images import local_image
from orchestrator.store import open_store


@dataclass(frozen=True)
class LabHandle:
    prefix: str
    subnet: str
    state_dir: Path
    nodes: int

    def agent(self, vm: str, timeout_s: float = 10.0) -> GuestAgent:
        """The guest agent of one of the lab's VMs, at the address the records give it."""
        store = open_store(self.state_dir)
        try:
            record, key = store.vm(vm), store.vm_key(vm)
        finally:
            store.close()
        assert record is not None and record.address, f"no VM {vm} with an address"
        return GuestAgent(record.address, lab_fleet(self.state_dir, self.prefix).policy,
                          timeout_s=timeout_s, key=key)

    def daemon_log_tails(self, lines: int = 12) -> str:
        """The end of each node's libvirtd and QEMU logs, for a failing test's message."""
        parts = []
        for log in sorted((self.state_dir / "labs" / self.prefix).glob("*/log/**/*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.relative_to(self.state_dir)}\n" + "\n".join(tail))
        return "\n".join(parts)


def lab_fixture(prefix: str, subnet: str, nodes: int = 3, *extra: str):
    """A module-scoped fixture bringing up one lab for the whole module."""

    @pytest.fixture(scope="module")
    def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabHandle]:
        if os.geteuid() != 0:
            pytest.skip("the lab needs root")
        local_image().check()
        state_dir = tmp_path_factory.mktemp(f"state-{prefix}")
        saved = {k: os.environ.get(k) for k in ("EDGEIOT_STATE_DIR", "EDGEIOT_LAB")}
        os.environ.update(EDGEIOT_STATE_DIR=str(state_dir), EDGEIOT_LAB=prefix)
        try:
            status = main(["lab", "up", "--nodes", str(nodes), "--subnet", subnet, *extra])
            assert status == ExitStatus.SUCCESS, "lab up failed"
            yield LabHandle(prefix, subnet, state_dir, nodes)
        finally:
            main(["lab", "down"])
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    return lab
