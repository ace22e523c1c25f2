"""The `orchestrator` command: parse, call the layers below, render.

`main(argv)` returns an ExitStatus and is what tests call in-process; `run()` is the console
script. Subcommands live one module each in `orchestrator.commands`; none of them handles
errors: they raise `OrchestratorError` and this module turns that into one line on stderr
and a non-zero exit code. Anything else that escapes (a bug, a library's surprise) is one
line too, exit 1; `--debug` or EDGEIOT_DEBUG=1 shows its traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

import click

from orchestrator import __version__, commands
from orchestrator.context import AppContext, default_state_dir
from orchestrator.errors import ExitStatus, OrchestratorError

DEBUG_ENV = "EDGEIOT_DEBUG"


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
@click.option("--debug", is_flag=True, envvar=DEBUG_ENV,
              help="Show the traceback of an unexpected error (or set EDGEIOT_DEBUG=1).")
@click.pass_context
def root(ctx: click.Context, state_dir: str, debug: bool) -> None:
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
    except Exception as exc:  # noqa: BLE001 - the one place every surprise becomes a line
        if _debug(args):
            traceback.print_exc()
        click.echo(f"orchestrator: error: unexpected {type(exc).__name__}: "
                   f"{_one_line(str(exc))[:300]} (--debug shows the traceback)", err=True)
        return ExitStatus.ERROR
    if isinstance(result, int) and result in iter(ExitStatus):
        return ExitStatus(result)
    return ExitStatus.SUCCESS


def _debug(args: Sequence[str]) -> bool:
    """--debug before the subcommand, or EDGEIOT_DEBUG set to a true value."""
    flag = os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
    return flag or "--debug" in args


def _one_line(message: str) -> str:
    return " ".join(message.split())


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
