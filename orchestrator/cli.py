"""The `orchestrator` command: parse, call the layers below, render.

`main(argv)` returns an ExitStatus and is what tests call in-process; `run()` is the console
script. Subcommands live one module each in `orchestrator.commands`; none of them handles
errors: they raise `OrchestratorError` and this module turns that into one line on stderr
and a non-zero exit code.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from orchestrator import __version__, commands
from orchestrator.context import AppContext, default_state_dir
from orchestrator.errors import ExitStatus, OrchestratorError


class LazyGroup(click.Group):
    """The root group: a subcommand's module is imported only when that command runs (see
    orchestrator.commands), so `orchestrator migrate` does not pay for matplotlib."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(c.name for c in commands.discover() if c.name)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return commands.find(cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="orchestrator")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    envvar="EDGEIOT_STATE_DIR",
    default=default_state_dir,
    show_default="$EDGEIOT_STATE_DIR or /var/lib/edgeiot",
    help="Where records, lab state and calibrations live.",
)
@click.pass_context
def root(ctx: click.Context, state_dir: str) -> None:
    """edgeIoT: proxy VMs on fog nodes, live-migrated when it cuts core traffic."""
    ctx.obj = AppContext(state_dir=state_dir)


def main(argv: Sequence[str] | None = None) -> ExitStatus:
    """Run one command; every failure becomes a one-line message and an exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = root.main(args=args, prog_name="orchestrator", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # pragma: no cover - click>=8.2 only
        click.echo(exc.format_message(), err=True)
        return ExitStatus.BAD_INPUT
    except click.UsageError as exc:
        click.echo(f"orchestrator: error: {_one_line(exc.format_message())}", err=True)
        return ExitStatus.BAD_INPUT
    except click.exceptions.Exit as exc:
        return ExitStatus(exc.exit_code) if exc.exit_code in iter(ExitStatus) else ExitStatus.ERROR
    except (click.Abort, KeyboardInterrupt):
        click.echo("orchestrator: interrupted", err=True)
        return ExitStatus.INTERRUPTED
    except OrchestratorError as exc:
        click.echo(f"orchestrator: error: {_one_line(str(exc))}", err=True)
        return exc.exit_status
    if isinstance(result, int) and result in iter(ExitStatus):
        return ExitStatus(result)
    return ExitStatus.SUCCESS


def _one_line(message: str) -> str:
    return " ".join(message.split())


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
