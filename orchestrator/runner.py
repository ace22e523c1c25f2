"""One command-runner protocol for local, in-namespace and remote commands.

Every runner takes an argument list (never a shell string, so no user input is ever parsed
by a shell) and returns a `CommandResult`. Parsers of command output are pure functions
elsewhere, tested on captured text.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from orchestrator.errors import OrchestratorError


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def check(self) -> CommandResult:
        """Raise with the command's own last error line when it failed."""
        if not self.ok:
            detail = (self.stderr.strip() or self.stdout.strip()).splitlines()
            last = detail[-1] if detail else f"exit status {self.rc}"
            raise OrchestratorError(f"{' '.join(self.argv)}: {last}")
        return self


class Runner(Protocol):
    def run(self, argv: Sequence[str], *, check: bool = True,
            timeout: float | None = 60.0) -> CommandResult: ...


class LocalRunner:
    """Runs commands on this machine, in the current namespaces."""

    def run(self, argv: Sequence[str], *, check: bool = True,
            timeout: float | None = 60.0) -> CommandResult:
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise OrchestratorError(f"{argv[0]}: command not found") from exc
        except subprocess.TimeoutExpired as exc:
            raise OrchestratorError(f"{' '.join(argv)}: timed out after {timeout} s") from exc
        result = CommandResult(tuple(argv), done.returncode, done.stdout, done.stderr)
        return result.check() if check else result


@dataclass
class NamespaceRunner:
    """Runs commands inside a named network namespace (`ip netns exec`)."""

    namespace: str
    local: Runner = LocalRunner()

    def run(self, argv: Sequence[str], *, check: bool = True,
            timeout: float | None = 60.0) -> CommandResult:
        return self.local.run(["ip", "netns", "exec", self.namespace, *argv],
                              check=check, timeout=timeout)
