"""Shared test helpers: run the CLI in-process and capture what it printed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from orchestrator.cli import main
from orchestrator.errors import ExitStatus


@dataclass
class CliResult:
    status: ExitStatus
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """cli("vm", "list", "--json") -> CliResult, run through orchestrator.cli.main."""
    def run(*args: str) -> CliResult:
        capsys.readouterr()
        status = main(list(args))
        captured = capsys.readouterr()
        return CliResult(status, captured.out, captured.err)
    return run
