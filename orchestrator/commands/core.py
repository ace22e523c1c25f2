"""`orchestrator core stats|move`: the lab's SDN core (per-class core traffic, flow moves)."""

from __future__ import annotations

from typing import Any

import click

from orchestrator.commands._common import app, json_option, print_json, print_table
from orchestrator.commands.lab import prefix_option
from orchestrator.errors import UserError
from orchestrator.lab.controller.api import ControllerClient
from orchestrator.lab.sdn import controller_client, ovs_files
from orchestrator.lab.state import LabPaths


@click.group("core")
def command() -> None:
    """The lab's SDN core: OpenFlow counters per traffic class and per fog-node link."""


def client_for(ctx: click.Context, prefix: str) -> ControllerClient:
    client = controller_client(ovs_files(LabPaths(app(ctx).state_path, prefix).root, prefix))
    if client is None:
        raise UserError(f"lab {prefix!r} has no SDN core: bring it up with "
                        "'orchestrator lab up --core sdn'")
    return client


@command.command("stats")
@prefix_option
@json_option
@click.pass_context
def stats(ctx: click.Context, prefix: str, as_json: bool) -> None:
    """Core bytes and packets per class and per fog-node link (OpenFlow flow/port stats)."""
    data = client_for(ctx, prefix).stats()
    if as_json:
        print_json(data)
        return
    render(data)


def render(data: dict[str, Any]) -> None:
    print_table("core traffic per class", ["class", "bytes", "packets"],
                [(k, v["bytes"], v["packets"]) for k, v in data.get("classes", {}).items()])
    print_table("core traffic per fog-node link", ["node", "bytes to core", "bytes from core",
                                                   "dropped"],
                [(k, v["to_core"], v["from_core"], v.get("dropped"))
                 for k, v in sorted(data.get("links", {}).items())])


@command.command("move")
@click.option("--mac", required=True, help="The migrated VM's MAC address.")
@click.option("--node", required=True, help="The fog node it now runs on.")
@prefix_option
@json_option
@click.pass_context
def move(ctx: click.Context, mac: str, node: str, prefix: str, as_json: bool) -> None:
    """Move a VM's flows to NODE now (what a migration does at switch-over)."""
    reply = client_for(ctx, prefix).move(mac, node)
    if as_json:
        print_json(reply)
    else:
        click.echo(f"{reply['mac']} now forwarded to {reply['node']} (port {reply['port']})")
