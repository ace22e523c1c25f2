"""What subcommands share: the fleet options, opening the store, and rendering."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from orchestrator.context import AppContext
from orchestrator.fleet import resolve_fleet
from orchestrator.fog.session import FleetSession
from orchestrator.store import Store, open_store

F = TypeVar("F", bound=Callable[..., Any])

# Wide tables in pipes and logs too; a terminal keeps its own width.
console = Console(width=None if sys.stdout.isatty() else 160)


def inventory_option(func: F) -> F:
    """--inventory FILE: use the fog nodes of a real lab instead of the lab-in-a-box."""
    return click.option("--inventory", type=click.Path(dir_okay=False), default=None,
                        envvar="EDGEIOT_INVENTORY",
                        help="Ansible-style inventory of real fog nodes (default: the lab).")(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def app(ctx: click.Context) -> AppContext:
    obj = ctx.find_object(AppContext)
    assert obj is not None, "the root command sets AppContext"
    return obj


@contextmanager
def fleet_session(ctx: click.Context, inventory: str | None) -> Iterator[FleetSession]:
    with FleetSession(resolve_fleet(app(ctx).state_path, inventory)) as session:
        yield session


@contextmanager
def store(ctx: click.Context) -> Iterator[Store]:
    opened = open_store(app(ctx).state_path)
    try:
        yield opened
    finally:
        opened.close()


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row))
    console.print(table)


def print_listing(rows: Sequence[dict[str, Any]], as_json: bool, title: str,
                  columns: Sequence[str], cells: Callable[[dict[str, Any]], Sequence[Any]]
                  ) -> None:
    """A list command's output: the rows as JSON, or a table of `cells(row)`."""
    if as_json:
        print_json(rows)
    else:
        print_table(title, columns, [cells(r) for r in rows])
