"""`orchestrator app install|list|remove|event|query`: applications and their VMs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from orchestrator.commands._common import (
    app as app_context,
)
from orchestrator.commands._common import (
    fleet_session,
    inventory_option,
    json_option,
    print_json,
    print_table,
    store,
)
from orchestrator.commands._numbers import MIB_MAX, count
from orchestrator.edge.apps import DEPLOYMENTS, KINDS, AppService, face_params, validate_grants
from orchestrator.errors import UserError


def split_list(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _not_finite(token: str) -> Any:
    raise UserError(f"{token} is not a finite number")


def _finite(token: str) -> float:
    """A JSON number as a float; 1e999 (which float() reads as infinity) is refused."""
    number = float(token)
    return number if math.isfinite(number) else _not_finite(token)


def parse_args(pairs: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE pairs; a VALUE that parses as JSON (numbers, true) is taken as such.

    A number must be finite: JSON's NaN/Infinity and an overflowing 1e999 are refused here,
    in one line, rather than sent to the guest (whose strict decoder refuses them too)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"expected KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value, parse_constant=_not_finite, parse_float=_finite)
        except UserError as exc:
            raise UserError(f"{key}={value}: {exc}") from None
        except ValueError:
            out[key] = value
    return out


@click.group("app")
def command() -> None:
    """Applications: local, remote (cloud) or add-on VMs fed metadata by proxy VMs."""


capacity_option = click.option(
    "--fog-capacity", "fog_capacity", type=count(0, MIB_MAX), default=None,
    help="MiB a fog node offers to VMs (default: its capacity fact, else 1024); "
         "beyond it the VM goes to the cloud node.")


@command.command("install")
@click.argument("name")
@click.option("--kind", required=True, help=", ".join(KINDS))
@click.option("--deploy", "deployment", default="local", show_default=True,
              help="local or remote")
@click.option("--node", default=None, help="Fog node of a local application.")
@click.option("--types", default=None, help="Data types granted (default: what the model reads).")
@capacity_option
@inventory_option
@json_option
@click.pass_context
def install(ctx: click.Context, name: str, kind: str, deployment: str, node: str | None,
            types: str | None, fog_capacity: int | None, inventory: str | None,
            as_json: bool) -> None:
    """Start the application VM and install its model into the proxies it serves."""
    if deployment not in DEPLOYMENTS[:2]:
        raise UserError(f"--deploy must be local or remote, got {deployment!r}")
    validate_grants(kind, split_list(types))  # refuse before touching the fleet
    with store(ctx) as records, fleet_session(ctx, inventory) as session:
        result = AppService(session, records, app_context(ctx).state_path, fog_capacity).install(
            name, kind, deployment, node, split_list(types))
    _report(result, as_json)


@command.command("event")
@click.argument("name")
@click.option("--area", required=True, help="Fog nodes, comma-separated.")
@click.option("--kind", default="facefind", show_default=True)
@click.option("--target-image", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PGM image of the face to find (facefind).")
@click.option("--max-distance", type=count(0, 64), default=10, show_default=True)
@capacity_option
@inventory_option
@json_option
@click.pass_context
def event(ctx: click.Context, name: str, area: str, kind: str, target_image: Path | None,
          max_distance: int, fog_capacity: int | None, inventory: str | None,
          as_json: bool) -> None:
    """Start add-on application VMs in every fog node of the area."""
    validate_grants(kind, None)
    params: dict[str, Any] = {}
    if kind == "facefind":
        if target_image is None:
            raise UserError("a facefind event needs --target-image")
        params = face_params(target_image, max_distance)
    with store(ctx) as records, fleet_session(ctx, inventory) as session:
        result = AppService(session, records, app_context(ctx).state_path, fog_capacity).event(
            name, split_list(area) or [], kind, params)
    _report(result, as_json)


def _report(app: dict[str, Any], as_json: bool) -> None:
    if as_json:
        app["params"] = {k: v for k, v in app["params"].items() if k != "target_px"}
        print_json(app)
        return
    for vm in app["vms"]:
        where = f"{vm['node']}" + (" (offloaded to the cloud: fog node lacks capacity)"
                                   if vm["offloaded"] else "")
        click.echo(f"{app['name']}: {vm['vm']} on {where}")
    click.echo(f"{app['name']}: model in {len(app['models'])} proxy VM(s), "
               f"granted {', '.join(app['types'])}")


@command.command("list")
@json_option
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """List applications."""
    with store(ctx) as records:
        rows = records.applications()
    if as_json:
        for row in rows:
            row["params"] = {k: v for k, v in row["params"].items() if k != "target_px"}
        print_json(rows)
    else:
        print_table("applications", ["name", "kind", "deploy", "VMs", "proxies", "types"],
                    [(r["name"], r["kind"], r["deployment"],
                      ", ".join(f"{v['vm']}@{v['node']}" for v in r["vms"]),
                      len(r["models"]), ",".join(r["types"])) for r in rows])


@command.command("remove")
@click.argument("name")
@inventory_option
@click.pass_context
def remove(ctx: click.Context, name: str, inventory: str | None) -> None:
    """Uninstall the model from the proxies and destroy the application's VMs."""
    with store(ctx) as records:
        if records.application(name) is None:
            raise UserError(f"unknown application {name!r}")
        with fleet_session(ctx, inventory) as session:
            result = AppService(session, records, app_context(ctx).state_path).remove(name)
    click.echo(f"{name} removed ({', '.join(result['vms']) or 'no VMs'})")


@command.command("query")
@click.argument("name")
@click.argument("query")
@click.argument("args", nargs=-1)
@inventory_option
@click.pass_context
def query(ctx: click.Context, name: str, query: str, args: tuple[str, ...],
          inventory: str | None) -> None:
    """Ask an application, e.g. `app query park request lat=40.1 lon=-74` (JSON)."""
    params = parse_args(args)
    with store(ctx) as records:
        if records.application(name) is None:
            raise UserError(f"unknown application {name!r}")
        with fleet_session(ctx, inventory) as session:
            print_json(AppService(session, records, app_context(ctx).state_path).query(
                name, query, params))
