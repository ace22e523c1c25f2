"""`orchestrator deploy --inventory FILE`: run the Ansible playbooks, summarise per host."""

from __future__ import annotations

import time
from typing import Any

import click

from orchestrator.commands._common import app, console, json_option, print_json, print_table
from orchestrator.deploy import (
    PLAYBOOKS,
    DeployRequest,
    DeploySummary,
    check_destinations,
    check_groups,
    network_hosts,
    play_hosts,
    progress_line,
    read_inventory,
    required_groups,
    run_playbook,
    ssh_targets,
)
from orchestrator.errors import OrchestratorError, UserError
from orchestrator.fleet import known_lab_networks
from orchestrator.netguard import NetworkPolicy
from orchestrator.ssh import preflight

STYLES = {"changed": "yellow", "FAILED": "bold red", "UNREACHABLE": "bold red",
          "ok": "green", "skipped": "cyan", "PLAY": "bold", "TASK": "bold"}


def _style(line: str) -> str:
    word = line.split()[0].rstrip(":") if line.strip() else ""
    return STYLES.get(word, "")


@click.command("deploy")
@click.option("--inventory", required=True, type=click.Path(dir_okay=False),
              help="Ansible INI inventory (see inventory.example.ini).")
@click.option("--limit", default=None, help="Only these hosts (Ansible pattern).")
@click.option("--check", is_flag=True, help="Dry run: report what would change.")
@click.option("--playbook", type=click.Choice(sorted(PLAYBOOKS)), default="site",
              show_default=True, help="Which playbook (site = all three in order).")
@click.option("--trust-on-first-use", is_flag=True,
              help="Lab only: accept a host's unknown SSH key in the preflight and write it "
                   "to the known_hosts file the inventory uses (a changed key is still "
                   "refused).")
@click.option("--skip-ssh-preflight", is_flag=True,
              help="Do not check the hosts over SSH (paramiko) before Ansible runs.")
@json_option
@click.pass_context
def command(ctx: click.Context, inventory: str, limit: str | None, check: bool,
            playbook: str, trust_on_first_use: bool, skip_ssh_preflight: bool,
            as_json: bool) -> None:
    """Deploy fog nodes, the orchestrator and monitoring with Ansible.

    First an SSH preflight (paramiko): every host the playbook will touch must answer, with
    a host key found in its known_hosts file, before anything is applied anywhere."""
    state_dir = app(ctx).state_path
    listed = read_inventory(inventory)
    check_groups(listed, required_groups(playbook), inventory)
    hosts = network_hosts(listed)
    policy = NetworkPolicy(labs=known_lab_networks(state_dir),
                           remote_hosts=frozenset(hosts) | frozenset(hosts.values()))
    check_destinations(hosts, policy)
    if not skip_ssh_preflight:
        selected = read_inventory(inventory, limit=limit) if limit else listed
        targets = ssh_targets(selected, play_hosts(selected, playbook), trust_on_first_use)
        _preflight(targets, policy, as_json)

    def show(event: dict[str, Any]) -> None:
        line = progress_line(event)
        if line is not None and not as_json:
            console.print(line, style=_style(line.strip()), markup=False, highlight=False)

    started = time.monotonic()
    request = DeployRequest(inventory, playbook, limit, check)
    summary, status = run_playbook(request, state_dir / "deploy", show)
    seconds = round(time.monotonic() - started, 1)
    if as_json:
        print_json({**summary.as_dict(), "status": status, "seconds": seconds})
    else:
        _render(summary, seconds)
    if not summary.ok:
        raise OrchestratorError("deploy failed: " + "; ".join(str(f) for f in summary.failures))


def _preflight(targets: dict[str, Any], policy: NetworkPolicy, as_json: bool) -> None:
    """Refuse (naming each failing host, nothing applied) unless every target answers."""
    started = time.monotonic()
    failed = preflight(targets, policy)
    seconds = round(time.monotonic() - started, 1)
    if failed:
        if as_json:
            print_json({"ok": False, "changed": 0, "status": "preflight", "seconds": seconds,
                        "hosts": {}, "failures": [
                            {"host": host, "task": "ssh preflight", "message": reason,
                             "unreachable": True} for host, reason in sorted(failed.items())]})
        raise UserError("ssh preflight failed, nothing applied: " + "; ".join(
            f"{host}: {reason}" for host, reason in sorted(failed.items())))
    if targets and not as_json:
        console.print(f"SSH preflight: {len(targets)} host(s) ok in {seconds} s "
                      f"({', '.join(sorted(targets))})", markup=False, highlight=False)


def _render(summary: DeploySummary, seconds: float) -> None:
    rows = [(host, h.ok, h.changed, h.failed, h.unreachable, h.skipped)
            for host, h in sorted(summary.hosts.items())]
    print_table(f"deploy: {'ok' if summary.ok else 'FAILED'} in {seconds} s",
                ["host", "ok", "changed", "failed", "unreachable", "skipped"], rows)
