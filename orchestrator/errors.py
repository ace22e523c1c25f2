"""Typed errors, so one place (cli.main) can map them to exit codes and one-line messages."""

from enum import IntEnum


class ExitStatus(IntEnum):
    """Process exit codes of the `orchestrator` command."""

    SUCCESS = 0
    ERROR = 1  # an operation failed (libvirt, QEMU, the lab)
    BAD_INPUT = 2  # the request was refused before anything changed
    INTERRUPTED = 130


class OrchestratorError(Exception):
    """An operation failed; the message is one line a user can act on."""

    exit_status = ExitStatus.ERROR


class UserError(OrchestratorError):
    """The request itself is invalid; nothing was changed."""

    exit_status = ExitStatus.BAD_INPUT


class UnsafeDestination(UserError):
    """Refused to connect: the address would leave the machine (see orchestrator.netguard)."""
