"""`orchestrator host run HOST -- CMD...`: one command on an inventory host over SSH.

Through `ssh.SshRunner` (paramiko): the host is reached as Ansible would reach it (address,
user, port, key and known_hosts file from the inventory), its key must already be known
unless `--trust-on-first-use` (labs) writes it to that known_hosts file, and the command's
argv is quoted so the remote shell never re-parses an argument.
"""

from __future__ import annotations

import click

from orchestrator.commands._common import app, json_option, print_json
from orchestrator.commands._numbers import positive
from orchestrator.deploy import read_inventory, ssh_targets
from orchestrator.errors import OrchestratorError, UserError
from orchestrator.fleet import known_lab_networks
from orchestrator.netguard import NetworkPolicy
from orchestrator.ssh import SshRunner


@click.group("host")
def command() -> None:
    """Commands on inventory hosts over SSH (host keys verified)."""


@command.command("run", context_settings={"ignore_unknown_options": True})
@click.option("--inventory", required=True, type=click.Path(dir_okay=False),
              envvar="EDGEIOT_INVENTORY", help="Ansible inventory naming the host.")
@click.option("--trust-on-first-use", is_flag=True,
              help="Lab only: accept an unknown host key and write it to the known_hosts "
                   "file the inventory uses (a changed key is still refused).")
@click.option("--timeout", "timeout_s", type=positive(86400), default=60.0, show_default=True,
              help="Seconds the command may run.")
@json_option
@click.argument("host")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def run(ctx: click.Context, inventory: str, trust_on_first_use: bool, timeout_s: float,
        as_json: bool, host: str, argv: tuple[str, ...]) -> None:
    """Run ARGV on HOST; its output is printed, a non-zero exit status fails the command."""
    listed = read_inventory(inventory)
    if host not in listed.get("_meta", {}).get("hostvars", {}):
        raise UserError(f"{inventory}: no host {host!r}")
    targets = ssh_targets(listed, [host], trust_on_first_use)
    if host not in targets:
        raise UserError(f"{host}: not reached over SSH (ansible_connection is not ssh)")
    target = targets[host]
    policy = NetworkPolicy(labs=known_lab_networks(app(ctx).state_path),
                           remote_hosts=frozenset({host, target.host}))
    try:
        with SshRunner(target, policy) as runner:
            result = runner.run(list(argv), check=False, timeout=timeout_s)
    except OrchestratorError as exc:
        raise type(exc)(f"{host}: {exc}") from exc
    if as_json:
        print_json({"host": host, "address": target.host, "argv": list(argv), "rc": result.rc,
                    "stdout": result.stdout, "stderr": result.stderr})
    else:
        click.echo(result.stdout, nl=False)
        click.echo(result.stderr, nl=False, err=True)
    if not result.ok:
        raise OrchestratorError(f"{host}: {' '.join(argv)}: exit status {result.rc}")
