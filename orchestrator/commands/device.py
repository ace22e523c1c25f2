"""`orchestrator device add|list|actuate`: the device registry, commands to actuators."""

from __future__ import annotations

import json

import click

from orchestrator.commands._common import (
    app,
    fleet_session,
    inventory_option,
    json_option,
    print_json,
    print_table,
    store,
)
from orchestrator.edge.devices import MOBILITY, ROLES, DeviceRegistry, validate_device_id
from orchestrator.edge.proxies import ProxyService
from orchestrator.errors import UserError


@click.group("device")
def command() -> None:
    """Devices: sensors and actuators of users, attached to base stations."""


@command.command("add")
@click.argument("device_id")
@click.option("--user", required=True)
@click.option("--type", "dtype", required=True, help="gps, ultrasonic, speed, camera, ...")
@click.option("--mobility", default="mobile", show_default=True, help="/".join(MOBILITY))
@click.option("--role", default="sensor", show_default=True, help="/".join(ROLES))
@click.option("--bs", default=None, help="Base station (fog node) it attaches to.")
@click.option("--group", default=None, help="Devices mounted together (e.g. one car).")
@inventory_option
@json_option
@click.pass_context
def add(ctx: click.Context, device_id: str, user: str, dtype: str, mobility: str, role: str,
        bs: str | None, group: str | None, inventory: str | None, as_json: bool) -> None:
    """Register a device and tell its user's proxy VM about it."""
    with store(ctx) as records:
        if bs is not None:
            with fleet_session(ctx, inventory) as session:
                session.fleet.node(bs)
        device = DeviceRegistry(records).add(device_id, user, dtype, mobility, role, bs, group)
        proxy = records.user(user)["proxy_vm"]  # type: ignore[index]
        if proxy and records.vm(proxy) is not None:
            with fleet_session(ctx, inventory) as session:
                ProxyService(session, records, app(ctx).state_path).push_devices(proxy)
    if as_json:
        print_json(device)
    else:
        click.echo(f"device {device['id']} ({dtype}) registered for {user}")


@command.command("list")
@click.option("--user", default=None)
@json_option
@click.pass_context
def list_(ctx: click.Context, user: str | None, as_json: bool) -> None:
    """List registered devices."""
    with store(ctx) as records:
        rows = records.devices(user)
    if as_json:
        print_json(rows)
    else:
        print_table("devices", ["id", "user", "type", "mobility", "role", "bs", "group"],
                    [(r["id"], r["user"], r["type"], r["mobility"], r["role"], r["bs"],
                      r["grp"]) for r in rows])


@command.command("actuate")
@click.argument("device_id")
@click.argument("command_json", metavar="COMMAND")
@inventory_option
@click.pass_context
def actuate(ctx: click.Context, device_id: str, command_json: str,
            inventory: str | None) -> None:
    """Send COMMAND (a JSON object, e.g. '{"on": 1}') to an actuator via its proxy VM."""
    device_id = validate_device_id(device_id)
    try:
        command_obj = json.loads(command_json)
    except ValueError:
        command_obj = None
    if not isinstance(command_obj, dict):
        raise UserError(f"COMMAND must be a JSON object, got {command_json!r}")
    with store(ctx) as records:
        DeviceRegistry(records).require_actuator(device_id)  # before any connection
        with fleet_session(ctx, inventory) as session:
            result = ProxyService(session, records, app(ctx).state_path).actuate(
                device_id, command_obj)
    print_json(result)
