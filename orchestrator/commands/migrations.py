"""`orchestrator migrations`: the migration records."""

from __future__ import annotations

import click

from orchestrator.commands._common import json_option, print_json, print_table, store
from orchestrator.commands._numbers import count


@click.command("migrations")
@click.option("--vm", default=None, help="Only this VM's migrations.")
@click.option("--status", default=None,
              type=click.Choice(["running", "completed", "failed", "aborted"]))
@click.option("--limit", type=count(1, 1_000_000), default=None)
@click.option("--samples", is_flag=True, help="Include job-stats samples (with --json).")
@json_option
@click.pass_context
def command(ctx: click.Context, vm: str | None, status: str | None, limit: int | None,
            samples: bool, as_json: bool) -> None:
    """List recorded migrations, newest first."""
    with store(ctx) as records:
        rows = records.migrations(vm=vm, status=status, limit=limit)
        if samples:
            for row in rows:
                row["samples"] = records.samples(row["id"])
    if as_json:
        print_json(rows)
        return
    table = []
    for row in rows:
        result = row["result"] or {}
        table.append((row["id"], row["vm"], f"{row['source']}→{row['destination']}",
                      row["status"], result.get("total_time_ms"), result.get("downtime_ms"),
                      _mib(result.get("transferred_bytes")), result.get("iterations"),
                      (row["error"] or "")[:60]))
    print_table("migrations", ["id", "vm", "hop", "status", "time ms", "downtime ms",
                               "sent MiB", "iters", "error"], table)


def _mib(value: int | None) -> str | None:
    return None if value is None else f"{value / 2**20:.1f}"
