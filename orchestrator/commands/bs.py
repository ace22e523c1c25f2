"""`orchestrator bs add|list`: base stations and the fog node(s) serving them."""

from __future__ import annotations

import re

import click

from orchestrator.commands._common import (
    fleet_session,
    inventory_option,
    json_option,
    print_listing,
    store,
)
from orchestrator.errors import UserError

BS_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


@click.group("bs")
def command() -> None:
    """Base stations: which fog node serves each (several BSs may share one)."""


@command.command("add")
@click.argument("bs_id")
@click.option("--node", required=True, help="Fog node serving this BS.")
@click.option("--alt", "alternates", multiple=True,
              help="Co-located fog node reaching the BS at the same core cost (repeatable).")
@inventory_option
@click.pass_context
def add(ctx: click.Context, bs_id: str, node: str, alternates: tuple[str, ...],
        inventory: str | None) -> None:
    """Map BS_ID to a fog node (replaces an existing mapping)."""
    if not BS_ID.match(bs_id):
        raise UserError(f"invalid base station id {bs_id!r}: use [A-Za-z0-9_.:-], ≤ 64 chars")
    with fleet_session(ctx, inventory) as session:
        for name in (node, *alternates):
            session.fleet.node(name)
    with store(ctx) as records:
        records.add_base_station(bs_id, node, alternates)
    click.echo(f"{bs_id} → {node}" + (f" (+{', '.join(alternates)})" if alternates else ""))


@command.command("list")
@json_option
@click.pass_context
def listing(ctx: click.Context, as_json: bool) -> None:
    """List base stations."""
    with store(ctx) as records:
        rows = records.base_stations()
    print_listing(rows, as_json, "base stations", ["bs", "node", "alternates"],
                  lambda r: (r["bs_id"], r["node"], ",".join(r["alternates"])))
