"""Runs inside a fresh private mount namespace of a fog node: bind the node's directories over
libvirt's paths, then start virtlogd and libvirtd as daemons and exit.

The daemons keep the mount namespace alive; later processes join it with
`nsenter --target <libvirtd pid> --mount --net`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

from orchestrator.lab.daemons import NodeDirs


def bind_mount(source: str, target: str) -> None:
    os.makedirs(target, exist_ok=True)
    subprocess.run(["mount", "--bind", source, target], check=True)


def wait_for_file(path: Path, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"nodeinit: {path} did not appear within {timeout_s} s")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--node-dir", required=True)
    dirs = NodeDirs(Path(parser.parse_args().node_dir))
    for source, target in dirs.bind_pairs():
        bind_mount(source, target)
    subprocess.run(["virtlogd", "-d", "-p", str(dirs.virtlogd_pidfile)], check=True)
    wait_for_file(Path("/run/libvirt/virtlogd-sock"))
    subprocess.run(["libvirtd", "-d", "--listen", "-p", str(dirs.libvirtd_pidfile)], check=True)
    wait_for_file(dirs.libvirtd_pidfile)


if __name__ == "__main__":
    main()
