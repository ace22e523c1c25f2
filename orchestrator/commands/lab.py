"""`orchestrator lab up|status|down`: the lab-in-a-box."""

from __future__ import annotations

from typing import Any

import click

from orchestrator.commands._common import app, json_option, print_json, print_table
from orchestrator.commands._numbers import (
    MBIT_MAX,
    MIB_MAX,
    MS_MAX,
    count,
    non_negative,
    positive,
)
from orchestrator.fleet import default_lab_prefix
from orchestrator.lab.builder import Lab, require_root
from orchestrator.lab.topology import LabSpec

prefix_option = click.option("--prefix", default=default_lab_prefix,
                             show_default="$EDGEIOT_LAB or eiot",
                             help="Name prefix of every namespace, link and process of the lab.")


@click.group("lab")
def command() -> None:
    """Lab-in-a-box: fog nodes as network namespaces, each with its own libvirtd."""


@command.command("up")
@click.option("--nodes", type=int, default=3, show_default=True, help="Number of fog nodes.")
@click.option("--core-mbit", type=positive(MBIT_MAX),
              default=None, help="Shape each core link to R Mbit/s.")
@click.option("--core-delay-ms", type=non_negative(MS_MAX),
              default=None, help="One-way delay per core link.")
@click.option("--node-memory", "node_memory_mib", type=count(1, MIB_MAX), default=None,
              help="VM memory (MiB) each fog node offers; default: what the host has.")
@click.option("--cloud", is_flag=True, help="Add a cloud node behind a slower core link.")
@click.option("--cloud-mbit", type=positive(MBIT_MAX), default=100.0, show_default=True)
@click.option("--cloud-delay-ms", type=non_negative(MS_MAX), default=None)
@click.option("--subnet", default="10.77.0.0/16", show_default=True)
@click.option("--core", "core", default="bridge", show_default=True,
              help="Core: bridge (Linux bridge) or sdn (Open vSwitch + OpenFlow controller).")
@click.option("--migration-mbit", type=positive(MBIT_MAX), default=None,
              help="SDN core: limit the migration traffic class to R Mbit/s (OpenFlow meter).")
@prefix_option
@json_option
@click.pass_context
def up(ctx: click.Context, nodes: int, core_mbit: float | None, core_delay_ms: float | None,
       node_memory_mib: int | None, cloud: bool, cloud_mbit: float,
       cloud_delay_ms: float | None, subnet: str, core: str, migration_mbit: float | None,
       prefix: str, as_json: bool) -> None:
    """Bring up the lab."""
    spec = LabSpec(prefix=prefix, nodes=nodes, subnet=subnet, core_mbit=core_mbit,
                   core_delay_ms=core_delay_ms, node_memory_mib=node_memory_mib, cloud=cloud,
                   cloud_mbit=cloud_mbit, cloud_delay_ms=cloud_delay_ms, core=core,
                   migration_mbit=migration_mbit)
    require_root()
    record = Lab(spec, app(ctx).state_path).up()
    if as_json:
        print_json(record)
    else:
        _render(record)
        click.echo(f"lab {prefix} up in {record['up_seconds']:.1f} s "
                   f"(domain type {record['domain_type']})")


@command.command("status")
@prefix_option
@json_option
@click.pass_context
def status(ctx: click.Context, prefix: str, as_json: bool) -> None:
    """Show the lab's nodes, daemons and core traffic."""
    record = _lab(ctx, prefix).status()
    if as_json:
        print_json(record)
    else:
        _render(record)


@command.command("restart-libvirtd")
@click.argument("node")
@prefix_option
@click.pass_context
def restart_libvirtd(ctx: click.Context, node: str, prefix: str) -> None:
    """Restart one node's libvirtd (running VMs survive)."""
    require_root()
    pid = _lab(ctx, prefix).restart_libvirtd(node)
    click.echo(f"{node}: libvirtd restarted (pid {pid})")


@command.command("down")
@prefix_option
@json_option
@click.pass_context
def down(ctx: click.Context, prefix: str, as_json: bool) -> None:
    """Tear the lab down; idempotent, and cleans up after a crashed `lab up` too."""
    require_root()
    removed = _lab(ctx, prefix).down()
    if as_json:
        print_json(removed)
    else:
        click.echo(f"lab {prefix} down: {removed['processes']} processes ended, "
                   f"{removed['namespaces']} namespaces and {removed['links']} links removed")


def _lab(ctx: click.Context, prefix: str) -> Lab:
    return Lab.recorded(app(ctx).state_path, prefix)


def _render(record: dict[str, Any]) -> None:
    core = record.get("core_bytes", {})
    rows = [(n["name"], n.get("kind", "fog"), n.get("address"), n.get("namespace"),
             n.get("libvirtd_pid"),
             core.get(n["name"], {}).get("to_core"), core.get(n["name"], {}).get("from_core"))
            for n in record.get("nodes", [])]
    print_table(f"lab: {record.get('status')}",
                ["node", "kind", "address", "namespace", "libvirtd pid", "bytes to core",
                 "bytes from core"], rows)
