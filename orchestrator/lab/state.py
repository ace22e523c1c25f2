"""The lab's state file: what exists, so later processes can use and tear down the lab.

Written before anything is created (status "starting") and updated as objects appear, so a
crashed `lab up` still leaves a trail; teardown additionally scans for the lab's prefix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import OrchestratorError


@dataclass(frozen=True)
class LabPaths:
    state_dir: Path
    prefix: str

    @property
    def root(self) -> Path:
        return self.state_dir / "labs" / self.prefix

    @property
    def state_file(self) -> Path:
        return self.root / "lab.json"

    def node_dir(self, node: str) -> Path:
        return self.root / node


def load(paths: LabPaths) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(paths.state_file.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise OrchestratorError(f"lab state {paths.state_file} is unreadable: {exc}") from exc
    return data


def save(paths: LabPaths, data: dict[str, Any]) -> None:
    """Atomic replace, so a reader never sees half a file."""
    paths.root.mkdir(parents=True, exist_ok=True)
    tmp = paths.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, paths.state_file)


def remove(paths: LabPaths) -> None:
    paths.state_file.unlink(missing_ok=True)
