"""`orchestrator reconcile`: repair records and leftovers after a crash."""

from __future__ import annotations

import click

from orchestrator.commands._common import (
    fleet_session,
    inventory_option,
    json_option,
    print_json,
    store,
)
from orchestrator.edge.reconcile import Reconciler


@click.command("reconcile")
@click.option("--dry-run", is_flag=True, help="Say what would be repaired; change nothing.")
@inventory_option
@json_option
@click.pass_context
def command(ctx: click.Context, dry_run: bool, inventory: str | None, as_json: bool) -> None:
    """Find where each VM really runs; end orphaned migrations; fix records and leftovers."""
    with fleet_session(ctx, inventory) as session, store(ctx) as records:
        report = Reconciler(session, records).run(dry_run=dry_run)
    if as_json:
        print_json(report)
        return
    verb = "would" if dry_run else "did"
    for key, label in (("aborted_jobs", "abort orphaned migration job"),
                       ("removed_leftovers", "remove leftover domain"),
                       ("placements", "correct recorded placement")):
        for vm, node in report[key]:
            click.echo(f"{verb} {label}: {vm} on {node}")
    for record_id, status, why in report["closed_records"]:
        click.echo(f"{verb} close migration #{record_id} as {status}: {why}")
    for problem in report["problems"]:
        click.echo(f"problem: {problem}", err=True)
    for vm, why in report["left_alone"]:
        click.echo(f"left alone: {vm}: {why}")
    if not any(report[k] for k in ("aborted_jobs", "removed_leftovers", "placements",
                                   "closed_records", "problems", "left_alone")):
        click.echo("consistent: nothing to repair")
