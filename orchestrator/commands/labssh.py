"""`orchestrator lab-ssh up|down|inventory`: sshd in each fog node of a running lab.

A separate command until `lab up` starts sshd itself (see orchestrator.lab.sshd); the group
can also be mounted as `orchestrator lab ssh` with `lab.command.add_command(ssh_group, "ssh")`.
"""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.commands._common import app, json_option, print_json, print_table
from orchestrator.commands.lab import prefix_option
from orchestrator.errors import UserError
from orchestrator.lab import sshd
from orchestrator.lab.builder import Lab
from orchestrator.lab.state import LabPaths, load
from orchestrator.lab.topology import LabSpec


def running_lab(ctx: click.Context, prefix: str) -> Lab:
    paths = LabPaths(app(ctx).state_path, LabSpec(prefix=prefix).prefix)
    record = load(paths)
    if record is None or record.get("status") != "up":
        raise UserError(f"lab {prefix!r} is not up: run 'orchestrator lab up' first")
    return Lab(LabSpec(**record["spec"]), app(ctx).state_path)


@click.group("lab-ssh")
def ssh_group() -> None:
    """sshd inside each fog node of the lab (for Ansible and the SSH runner)."""


@ssh_group.command("up")
@prefix_option
@json_option
@click.pass_context
def up(ctx: click.Context, prefix: str, as_json: bool) -> None:
    """Start sshd in every node (idempotent); keys are generated once per lab."""
    sshd.ensure_root()
    lab = running_lab(ctx, prefix)
    pids = sshd.start_all(lab)
    paths = sshd.ssh_paths(lab)
    result = {"pids": pids, "known_hosts": str(paths.known_hosts),
              "client_key": str(paths.client_key)}
    if as_json:
        print_json(result)
    else:
        print_table(f"lab {prefix}: sshd", ["node", "pid"], sorted(pids.items()))
        click.echo(f"known_hosts: {paths.known_hosts}\nclient key: {paths.client_key}")


@ssh_group.command("down")
@prefix_option
@click.pass_context
def down(ctx: click.Context, prefix: str) -> None:
    """Stop the lab's sshds (lab down does this too)."""
    sshd.ensure_root()
    stopped = sshd.stop_all(running_lab(ctx, prefix))
    click.echo(f"lab {prefix}: {stopped} sshd stopped")


@ssh_group.command("inventory")
@prefix_option
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Write the inventory here instead of printing it.")
@click.option("--var", "extra", multiple=True, metavar="KEY=VALUE",
              help="Extra variable for the [lab:vars] group (repeatable).")
@click.pass_context
def inventory(ctx: click.Context, prefix: str, output: str | None,
              extra: tuple[str, ...]) -> None:
    """Print an Ansible inventory of the lab (fog nodes over the lab's sshd)."""
    pairs = {}
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--var expects KEY=VALUE, got {item!r}")
        pairs[key] = value
    text = sshd.lab_inventory(running_lab(ctx, prefix), pairs)
    if output:
        Path(output).write_text(text)
    else:
        click.echo(text, nl=False)


command = ssh_group
