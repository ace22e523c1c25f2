"""Calibration files: the I/O edge around `Calibration.to_json()/from_json()`.

Why a module of its own: the model stays pure, and every command that reads or writes a
calibration (predict, calibrate, migrate) gets the same default location and the same
one-line errors. The active calibration lives at `<state_dir>/calibration.json`; export
and import copy it to and from any path, so a real lab's calibration travels. Writes are
atomic (temporary file + rename): a crash never leaves half a calibration behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.model.precopy import Calibration

FILENAME = "calibration.json"


def default_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / FILENAME


def read(path: str | Path) -> Calibration:
    """The calibration in `path`; UserError naming the file if missing or malformed."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"calibration file not found: {file}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read calibration file {file}: {_reason(exc)}") from None
    try:
        return Calibration.from_json(text)
    except (ValueError, TypeError) as exc:
        raise UserError(f"malformed calibration file {file}: {exc}") from None


def write(calibration: Calibration, path: str | Path) -> Path:
    """Write atomically, creating the directory; returns the path written."""
    file = Path(path)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", dir=file.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(calibration.to_json())
            os.replace(tmp, file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise UserError(f"cannot write calibration file {file}: {_reason(exc)}") from None
    return file


def load(state_dir: str | Path, path: str | Path | None = None) -> Calibration:
    """An explicit file if given (it must exist), else the active one, else the defaults."""
    if path is not None:
        return read(path)
    active = default_path(state_dir)
    return read(active) if active.exists() else Calibration()


def save(calibration: Calibration, state_dir: str | Path) -> Path:
    """Make `calibration` the active one."""
    return write(calibration, default_path(state_dir))


def export_to(state_dir: str | Path, destination: str | Path) -> Path:
    """Copy the active calibration out (validated on the way, so exports are always good)."""
    active = default_path(state_dir)
    if not active.exists():
        raise UserError(f"no calibration to export: {active} does not exist "
                        f"(run `orchestrator calibrate` or import one)")
    return write(read(active), destination)


def import_from(source: str | Path, state_dir: str | Path) -> Calibration:
    """Validate `source` and make it the active calibration."""
    calibration = read(source)
    save(calibration, state_dir)
    return calibration


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def check_qemu(calibration: Calibration, qemu_version: str | None, force: bool = False,
               option: str = "--force") -> str | None:
    """Refuse a calibration fitted on another QEMU (one line), unless forced; forced, the
    mismatch comes back as a warning for the caller to show and record."""
    mismatch = calibration.qemu_mismatch(qemu_version)
    if mismatch is None:
        return None
    if not force:
        raise UserError(f"{mismatch}: refit with `orchestrator calibrate`, or pass {option} "
                        "to use it anyway")
    return f"{mismatch} (used anyway: {option})"


def local_qemu_version(run: Callable[[list[str]], str] | None = None) -> str | None:
    """The version of this machine's qemu-system-x86_64 (lab nodes run it), or None."""
    try:
        text = (run or _run)(["qemu-system-x86_64", "--version"])
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"version (\d+\.\d+(?:\.\d+)?)", text)
    return found[1] if found else None


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout
