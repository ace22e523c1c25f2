"""Subcommands, one module each.

Every module in this package that defines a module-level click command named `command`
is registered by cli.py; adding a subcommand means adding a module, nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil

import click


def discover() -> list[click.Command]:
    """The `command` of every module in this package, in name order."""
    found: list[click.Command] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        command = getattr(module, "command", None)
        if isinstance(command, click.Command):
            found.append(command)
    return found


COMMANDS: list[click.Command] = discover()
