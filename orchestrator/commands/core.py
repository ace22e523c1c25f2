"""`orchestrator core stats|move|relay|locate`: the lab's SDN core (per-class core traffic,
flow moves, the MME's location updates arriving through the controller's API)."""

from __future__ import annotations

import re
from typing import Any

import click

from orchestrator.commands._common import app, json_option, print_json, print_table
from orchestrator.commands.lab import prefix_option
from orchestrator.errors import UserError
from orchestrator.fog.node import validate_name
from orchestrator.lab.controller.api import ControllerClient, check_endpoint, check_update
from orchestrator.lab.sdn import OvsFiles, controller_client, ovs_files, read_config
from orchestrator.lab.state import LabPaths

MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


@click.group("core")
def command() -> None:
    """The lab's SDN core: OpenFlow counters per traffic class and per fog-node link."""


def lab_files(ctx: click.Context, prefix: str) -> OvsFiles:
    return ovs_files(LabPaths(app(ctx).state_path, prefix).root, prefix)


def client_for(ctx: click.Context, prefix: str) -> ControllerClient:
    client = controller_client(lab_files(ctx, prefix))
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
    if not MAC.match(mac):
        raise UserError(f"--mac wants a MAC address like 52:54:00:0a:00:05, got {mac!r}")
    validate_name("node", node)
    reply = client_for(ctx, prefix).move(mac, node)
    if as_json:
        print_json(reply)
    else:
        click.echo(f"{reply['mac']} now forwarded to {reply['node']} (port {reply['port']})")


@command.command("relay")
@click.argument("endpoint", required=False, metavar="[ADDR:PORT]")
@click.option("--off", is_flag=True, help="Stop forwarding (updates are only kept).")
@prefix_option
@json_option
@click.pass_context
def relay(ctx: click.Context, endpoint: str | None, off: bool, prefix: str,
          as_json: bool) -> None:
    """Forward the location updates the controller receives to ADDR:PORT, where
    `orchestrator locate --serve ADDR:PORT` runs the MME and the decision engine. Without
    ADDR:PORT, show where they go."""
    if endpoint and off:
        raise UserError("give ADDR:PORT or --off, not both")
    client = client_for(ctx, prefix)
    if endpoint:
        config = read_config(lab_files(ctx, prefix)) or {}
        try:
            endpoint = check_endpoint(endpoint, {str(config.get("gateway"))})
        except ValueError as exc:
            raise UserError(str(exc)) from None
    if endpoint or off:
        reply = client.set_locate_endpoint(endpoint)
    else:
        reply = client.locate_endpoint()
    if as_json:
        print_json(reply)
        return
    target = reply.get("locate_endpoint")
    click.echo(f"location updates at the controller ({reply.get('received', 0)} received) "
               + (f"are forwarded to {target}" if target else "are only kept"))


@command.command("locate")
@click.argument("device")
@click.option("--bs", "bs_id", required=True, help="Base station the device is now at.")
@click.option("--member", "members", multiple=True,
              help="Device a cluster head reports for (repeatable).")
@prefix_option
@json_option
@click.pass_context
def locate(ctx: click.Context, device: str, bs_id: str, members: tuple[str, ...], prefix: str,
           as_json: bool) -> None:
    """Send one location update through the controller's API, as a base station would."""
    try:
        update = check_update({"device": device, "bs": bs_id, "members": list(members)})
    except ValueError as exc:
        raise UserError(str(exc)) from None
    reply = client_for(ctx, prefix).locate(update)
    if as_json:
        print_json(reply)
    if not reply.get("ok", False):
        raise UserError(f"the MME refused the update: {reply.get('error')}")
    if as_json:
        return
    if reply.get("stored"):
        click.echo("kept at the controller; no MME endpoint is set "
                   "(orchestrator core relay ADDR:PORT)")
        return
    print_table(f"{device} at {bs_id}, through the controller",
                ["verdict", "proxy", "hop", "result"],
                [(a.get("verdict"), a.get("proxy"),
                  f"{a.get('source') or '-'}→{a.get('destination') or '-'}",
                  (a.get("result") or {}).get("status")) for a in reply.get("actions", [])])
