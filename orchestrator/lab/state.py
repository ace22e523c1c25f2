"""The lab's state file: what exists, so later processes can use and tear down the lab.

Written before anything is created (status "starting") and updated as objects appear, so a
crashed `lab up` still leaves a trail; teardown additionally scans for the lab's prefix.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import OrchestratorError, UserError

# Host-wide, not per state directory: namespaces, links and routes are the host's, so two
# `lab up`s from different state directories can collide on a prefix or a subnet too.
UP_LOCK = Path("/run/lock/edgeiot-lab-up.lock")
UP_LOCK_WAIT_S = 300.0


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


@contextmanager
def up_lock(path: Path = UP_LOCK, wait_s: float = UP_LOCK_WAIT_S,
            poll_s: float = 0.1) -> Iterator[None]:
    """One `lab up` at a time on this host, from its refusal checks to its last object.

    Why: two `lab up`s of the same prefix (or of one subnet) both passed the checks, both
    started building, and the one that then failed tore down — by prefix — the lab the
    other had made. Under this lock the checks see everything another `lab up` made, so a
    refused `lab up` has created nothing and tears nothing down. Waits (a free lab up of
    another lab just runs after), released when the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    with open(path, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserError(f"another 'lab up' has held {path} for {wait_s:g} s: "
                                    "try again when it is done") from None
                time.sleep(poll_s)
        yield
