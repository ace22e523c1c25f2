"""Subcommands, one module each.

Every module in this package that defines a module-level click command named `command`
is registered by cli.py; adding a subcommand means adding a module, nothing else.

Modules are imported only when their command runs (or when help lists them all): importing
every one up front cost ~1 s per invocation (matplotlib, numpy, paramiko and ansible come in
with the simulation, calibration and deploy commands), a third of a short migration's wall
time. A command is found by its module name: the command's name without dashes
(`lab-ssh` lives in `labssh`); a command whose module is named otherwise is still found, by
importing every module.
"""

from __future__ import annotations

import importlib
import pkgutil

import click


def module_names() -> list[str]:
    """The command modules of this package, in name order, without importing them."""
    return sorted(i.name for i in pkgutil.iter_modules(__path__) if not i.name.startswith("_"))


def load(module_name: str) -> click.Command | None:
    """The `command` a module defines, importing that module alone."""
    module = importlib.import_module(f"{__name__}.{module_name}")
    command = getattr(module, "command", None)
    return command if isinstance(command, click.Command) else None


def discover() -> list[click.Command]:
    """The `command` of every module in this package, in module-name order."""
    return [c for name in module_names() if (c := load(name)) is not None]


def find(command_name: str) -> click.Command | None:
    """The command called `command_name`: its own module first, every module otherwise."""
    guess = command_name.replace("-", "")
    if guess in module_names():
        command = load(guess)
        if command is not None and command.name == command_name:
            return command
    return next((c for c in discover() if c.name == command_name), None)
