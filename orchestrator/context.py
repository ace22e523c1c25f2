"""What every command shares: the state directory (records, lab state, calibration)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = "/var/lib/edgeiot"


def default_state_dir() -> str:
    return os.environ.get("EDGEIOT_STATE_DIR", DEFAULT_STATE_DIR)


@dataclass
class AppContext:
    """Per-invocation context handed to subcommands through click's `ctx.obj`."""

    state_dir: str

    @property
    def state_path(self) -> Path:
        path = Path(self.state_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path
