"""What every command shares: the state directory, and lazily opened store and fleet."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = "/var/lib/edgeiot"


def default_state_dir() -> str:
    return os.environ.get("EDGEIOT_STATE_DIR", DEFAULT_STATE_DIR)


@dataclass
class AppContext:
    """Per-invocation context handed to subcommands through click's `ctx.obj`."""

    state_dir: str
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def state_path(self) -> Path:
        path = Path(self.state_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path
