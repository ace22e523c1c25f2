"""`orchestrator decisions`: every Eq. 1 decision with its inputs, threshold and verdict."""

from __future__ import annotations

import click

from orchestrator.commands._common import json_option, print_json, print_table, store
from orchestrator.commands._numbers import count


@click.command("decisions")
@click.option("--user", default=None, help="Only this user's decisions.")
@click.option("--limit", type=count(1, 1_000_000), default=None, help="Newest N only.")
@json_option
@click.pass_context
def command(ctx: click.Context, user: str | None, limit: int | None, as_json: bool) -> None:
    """List the control plane's decisions, oldest first."""
    with store(ctx) as records:
        rows = [e for e in records.events("decision") if user is None or e["subject"] == user]
    if limit:
        rows = rows[-limit:]
    if as_json:
        print_json(rows)
        return
    table = []
    for ev in rows:
        d = ev["data"]
        table.append((ev["id"], ev["subject"], d.get("verdict"), d.get("proxy"),
                      f"{d.get('source') or '-'}→{d.get('destination') or '-'}",
                      _num(d.get("t_mig_s")), _num(d.get("threshold_s")),
                      _num(d.get("dwell_s")), _num(d.get("r_data_bps")),
                      (d.get("result") or {}).get("status"), d.get("reason")))
    print_table("decisions", ["id", "user", "verdict", "proxy", "hop", "Tmig s",
                              "threshold s", "T_BS s", "r_data B/s", "result", "reason"], table)


def _num(value: float | None) -> str | None:
    return None if value is None else f"{value:.3g}"
