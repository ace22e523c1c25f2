"""Shared test helpers: run the CLI in-process and capture what it printed."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import settings

from orchestrator.cli import main
from orchestrator.errors import ExitStatus

# CI runs the property tests on a fixed example set, so a submission's result does not depend
# on the draw; developers keep hypothesis' random exploration (and its failure database).
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


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
