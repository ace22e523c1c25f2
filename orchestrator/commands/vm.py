"""`orchestrator vm create|list|destroy`."""

from __future__ import annotations

import click

from orchestrator.commands._common import (
    fleet_session,
    inventory_option,
    json_option,
    print_json,
    print_listing,
    store,
)
from orchestrator.commands._numbers import MIB_MAX, SECONDS_MAX, count, non_negative
from orchestrator.edge.vms import MAX_VCPUS, MIN_MEMORY_MIB, VmService
from orchestrator.errors import UserError
from orchestrator.fog.node import validate_name


@click.group("vm")
def command() -> None:
    """Proxy and application VMs on the fog nodes."""


@command.command("create")
@click.argument("name")
@click.option("--node", required=True, help="Fog node to start the VM on.")
@click.option("--memory", "memory_mib", type=count(MIN_MEMORY_MIB, MIB_MAX), default=256,
              show_default=True, help="Memory in MiB.")
@click.option("--vcpus", type=count(1, MAX_VCPUS), default=1, show_default=True)
@click.option("--role", type=click.Choice(["proxy", "app"]), default="proxy", show_default=True)
@click.option("--wait", "wait_s", type=non_negative(SECONDS_MAX), default=30.0,
              show_default=True, help="Seconds to wait for the guest agent (0: don't wait).")
@inventory_option
@json_option
@click.pass_context
def create(ctx: click.Context, name: str, node: str, memory_mib: int, vcpus: int, role: str,
           wait_s: float, inventory: str | None, as_json: bool) -> None:
    """Create and start a VM."""
    validate_name("VM", name)
    with fleet_session(ctx, inventory) as session, store(ctx) as records:
        vm = VmService(session, records).create(name, node, memory_mib, vcpus, role, wait_s)
    if as_json:
        print_json(vm.__dict__)
    else:
        click.echo(f"{vm.name} running on {vm.node} ({vm.memory_mib} MiB, {vm.address or '-'})")


@command.command("list")
@inventory_option
@json_option
@click.pass_context
def list_(ctx: click.Context, inventory: str | None, as_json: bool) -> None:
    """List VMs on every fog node."""
    with fleet_session(ctx, inventory) as session, store(ctx) as records:
        rows = VmService(session, records).listing()
        for node, why in sorted(session.unreachable.items()):
            click.echo(f"orchestrator: warning: fog node {node} unreachable: {why}", err=True)
    print_listing(rows, as_json, "VMs", ["name", "node", "state", "memory MiB", "address", "role"],
                  lambda r: (r["name"], r["node"], r["state"], r["memory_mib"], r["address"],
                             r["role"]))


@command.command("destroy")
@click.argument("name")
@inventory_option
@click.pass_context
def destroy(ctx: click.Context, name: str, inventory: str | None) -> None:
    """Stop and remove a VM wherever it is."""
    validate_name("VM", name)
    with fleet_session(ctx, inventory) as session, store(ctx) as records:
        nodes = VmService(session, records).destroy(name)
    click.echo(f"{name} destroyed" + (f" on {', '.join(nodes)}" if nodes else ""))


WORKLOAD_KINDS = ("none", "sweep", "uniform", "zipf", "bursty")  # the guest's workloads.KINDS


@command.command("workload")
@click.argument("name")
@click.option("--kind", type=click.Choice(WORKLOAD_KINDS), required=True,
              help="Write pattern: sweep, uniform, zipf (hot/cold), bursty (on/off); none "
                   "stops it.")
@click.option("--rate", "pages_s", type=count(0, 300_000), default=2000,
              show_default=True, metavar="PAGES_S", help="Pages written per second.")
@click.option("--working-set", "working_set_mib", type=count(0, 4096), default=32,
              show_default=True, metavar="MIB", help="Memory the workload writes over.")
@inventory_option
@json_option
@click.pass_context
def workload(ctx: click.Context, name: str, kind: str, pages_s: int, working_set_mib: int,
             inventory: str | None, as_json: bool) -> None:
    """Start a memory-writing workload in a running VM (or stop it with --kind none), to see
    how migrations and policies cope with it."""
    validate_name("VM", name)
    if kind != "none" and pages_s > 0 and working_set_mib == 0:
        raise UserError("--working-set must be > 0 MiB for a workload that writes")
    with fleet_session(ctx, inventory) as session, store(ctx) as records:
        agent = VmService(session, records).agent(name, timeout_s=10.0)
        status = agent.request("workload", kind=kind, pages_per_s=0 if kind == "none" else pages_s,
                               working_set_mib=0 if kind == "none" else working_set_mib)
    figures = status.get("workload") or {}
    if as_json:
        print_json(figures)
    elif kind == "none":
        click.echo(f"{name}: workload stopped")
    else:
        click.echo(f"{name}: {kind} workload, {pages_s} pages/s over {working_set_mib} MiB")
