"""`orchestrator metrics serve`: the Prometheus exporter of the records and the lab."""

from __future__ import annotations

import ipaddress
import os
import signal
import threading
from pathlib import Path
from typing import Any

import click
from prometheus_client import CollectorRegistry

from agent.host.exporter import serve_registry
from orchestrator.commands._common import app
from orchestrator.errors import UserError
from orchestrator.lab.builder import Lab
from orchestrator.lab.sdn import controller_client, ovs_files
from orchestrator.lab.state import LabPaths, load
from orchestrator.lab.topology import LabSpec
from orchestrator.metrics import OrchestratorCollector
from orchestrator.store import open_store


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--listen expects ADDR:PORT, got {text!r}")
    try:
        ipaddress.IPv4Address(host)
    except ValueError as exc:
        raise UserError(f"--listen expects an IPv4 address, got {host!r}") from exc
    return host, int(port)


def lab_core_bytes(state_dir: Path, prefix: str) -> dict[str, dict[str, int]]:
    """Core link counters of the lab if it is up, else nothing."""
    record = load(LabPaths(state_dir, prefix))
    if record is None or record.get("status") != "up":
        return {}
    core: dict[str, dict[str, int]] = Lab(LabSpec(**record["spec"]), state_dir).status()[
        "core_bytes"]
    return core


def lab_core_classes(state_dir: Path, prefix: str) -> dict[str, Any] | None:
    """The SDN controller's per-class counters, None when the lab has no SDN core."""
    client = controller_client(ovs_files(LabPaths(state_dir, prefix).root, prefix))
    return None if client is None else dict(client.stats())


@click.group("metrics")
def command() -> None:
    """Prometheus metrics of the orchestrator."""


@command.command("serve")
@click.option("--listen", default="127.0.0.1:9177", show_default=True,
              help="ADDR:PORT to serve /metrics on (loopback or a lab address).")
@click.option("--lab", "prefix", default=lambda: os.environ.get("EDGEIOT_LAB", "eiot"),
              show_default="$EDGEIOT_LAB or eiot",
              help="Lab whose core links to report (none if it is not up).")
@click.pass_context
def serve(ctx: click.Context, listen: str, prefix: str) -> None:
    """Serve the exporter until interrupted (SIGTERM or Ctrl-C)."""
    host, port = parse_listen(listen)
    state_dir = app(ctx).state_path
    LabSpec(prefix=prefix)  # validates the prefix
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OrchestratorCollector(lambda: open_store(state_dir),
                                            lambda: lab_core_bytes(state_dir, prefix),
                                            lambda: lab_core_classes(state_dir, prefix)))
    try:
        server = serve_registry(registry, host, port)  # bounded listener
    except OSError as exc:
        raise UserError(f"cannot listen on {listen}: {exc.strerror}") from exc
    click.echo(f"serving http://{host}:{port}/metrics", err=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        server.server_close()
