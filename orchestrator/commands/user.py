"""`orchestrator user add|list|stats`: users and their proxy VMs."""

from __future__ import annotations

import click

from orchestrator.commands._common import (
    app,
    fleet_session,
    inventory_option,
    json_option,
    print_json,
    print_listing,
    store,
)
from orchestrator.edge.proxies import ProxyPlacement, ProxyService
from orchestrator.edge.users import UserRegistry, validate_user


@click.group("user")
def command() -> None:
    """Users; each has a proxy VM that its devices stream to."""


@command.command("add")
@click.argument("name")
@click.option("--node", default=None, help="Fog node for the user's proxy VM (now).")
@click.option("--share-with", default=None, help="Share this trusted user's proxy VM.")
@inventory_option
@json_option
@click.pass_context
def add(ctx: click.Context, name: str, node: str | None, share_with: str | None,
        inventory: str | None, as_json: bool) -> None:
    """Add a user (and, with --node, start its proxy VM there)."""
    validate_user(name)
    placed: ProxyPlacement | None = None
    with store(ctx) as records:
        if node is not None:
            with fleet_session(ctx, inventory) as session:
                session.fleet.node(node)
                user = UserRegistry(records).add(name, share_with)
                placed = ProxyService(session, records, app(ctx).state_path).ensure_placed(
                    name, node)
                user.update(proxy_vm=placed.vm, node=placed.node, offloaded=placed.offloaded)
        else:
            user = UserRegistry(records).add(name, share_with)
    if as_json:
        print_json(user)
    elif placed is not None:
        click.echo(f"user {name} added, {placed.message()}")
    else:
        click.echo(f"user {name} added" + (f", proxy VM {user['proxy_vm']}"
                                           if user["proxy_vm"] else ""))


@command.command("list")
@json_option
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """List users and their proxy VMs."""
    with store(ctx) as records:
        rows = records.users()
    print_listing(rows, as_json, "users", ["name", "proxy VM"],
                  lambda r: (r["name"], r["proxy_vm"]))


@command.command("stats")
@click.argument("name")
@inventory_option
@click.pass_context
def stats(ctx: click.Context, name: str, inventory: str | None) -> None:
    """Stream statistics of the user's proxy VM (JSON)."""
    with store(ctx) as records, fleet_session(ctx, inventory) as session:
        print_json(ProxyService(session, records, app(ctx).state_path).stats(name))
