"""Mobility traces as CSV (`user,minute,bs_id`), streamed and validated with line numbers.

Why streamed: a day of 13,000 users is 18.7 million rows, a million users 1.4 billion; a
trace is read in blocks of lines and handed on as chunks of whole users, so memory is
bounded by the chunk size, never by the file.

Format: an optional header `user,minute,bs_id`, then one row per user and minute, all
non-negative integers. A user's rows are contiguous and cover minutes 0 … n_minutes−1 in
order (n_minutes = 1,440 for a day; multi-day traces just run longer), and every BS is
one of the layout's (0 … n_bs−1). Anything else is rejected with a `TraceError` naming
the line: malformed row, unknown BS, minute going backwards, gap, user seen twice,
user cut short.

Fast path: numpy parses a block at once and the checks are vectorised; only when numpy
refuses a block does a line-by-line parser run over it, to name the offending line. The
parsers take iterables of strings (pure, testable); only `read_trace`/`write_trace` and
the layout helpers touch files, and they accept paths or open text files.

Layouts travel as `bs_id,x_m,y_m,fog_id` CSVs (small: read whole).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import numpy.typing as npt

from orchestrator.model.mobility import MINUTES_PER_DAY, BsArray, Layout, layout_from_arrays

HEADER = "user,minute,bs_id"
LAYOUT_HEADER = "bs_id,x_m,y_m,fog_id"
WRITE_ROWS = 200_000  # rows formatted at once when writing (~10 MB of text)
Source = str | Path | IO[str]


class TraceError(ValueError):
    """A trace row is invalid; `line` is 1-based, as an editor shows it."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True)
class TraceChunk:
    """Whole users: their ids as in the file, and their BS per minute."""

    users: npt.NDArray[np.int64]
    places: BsArray  # (len(users), n_minutes)


@dataclass
class _State:
    """What the checks of the next block need to know about the rows before it."""

    n_bs: int
    n_minutes: int
    last_user: int = -1
    last_minute: int = -1
    seen: set[int] = field(default_factory=set)
    rows: int = 0


@dataclass
class _Pending:
    """Validated rows not yet handed on: BS column and the ids of the users they start.

    Only what a chunk needs is kept (4 bytes a row), in blocks joined once per chunk, so
    memory stays near one chunk of users and no row is copied more than twice.
    """

    bs: list[npt.NDArray[np.int32]] = field(default_factory=list)
    ids: list[npt.NDArray[np.int64]] = field(default_factory=list)
    rows: int = 0

    def add(self, rows: npt.NDArray[np.int64]) -> None:
        self.bs.append(rows[:, 2].astype(np.int32))
        self.ids.append(rows[rows[:, 1] == 0, 0].copy())  # minute 0 starts a user
        self.rows += len(rows)


# ----------------------------------------------------------------------------- reading


def parse_trace(lines: Iterable[str], n_bs: int, n_minutes: int = MINUTES_PER_DAY,
                chunk_users: int = 8192, block_rows: int = 262_144) -> Iterator[TraceChunk]:
    """Parse CSV lines (with or without the header) into validated chunks of users."""
    if n_bs < 1 or n_minutes < 1 or chunk_users < 1 or block_rows < 1:
        raise ValueError("n_bs, n_minutes, chunk_users and block_rows must be >= 1")
    it = iter(lines)
    first = next(it, None)
    if first is None:
        raise TraceError(1, "empty trace: expected rows of user,minute,bs_id")
    line_no = 1
    if first.strip().replace(" ", "") == HEADER:
        line_no = 2
    else:
        it = itertools.chain([first], it)
    state = _State(n_bs, n_minutes)
    pending = _Pending()
    while block := list(itertools.islice(it, block_rows)):
        rows = _parse_block(block, line_no)
        _check_block(rows, line_no, state)
        pending.add(rows)
        line_no += len(block)
        del block, rows
        if pending.rows >= chunk_users * n_minutes:
            yield from _complete_users(pending, state, chunk_users, final=False)
    if state.rows == 0:
        raise TraceError(line_no, "no rows: expected user,minute,bs_id")
    if state.last_minute != n_minutes - 1:
        raise TraceError(line_no - 1, f"user {state.last_user} ends at minute "
                         f"{state.last_minute}, expected {n_minutes - 1}")
    yield from _complete_users(pending, state, chunk_users, final=True)


def _parse_block(block: list[str], first_line: int) -> npt.NDArray[np.int64]:
    """(rows, 3) int64 array; on any syntax problem, name the first bad line."""
    if any(not line.strip() for line in block):
        _parse_strict(block, first_line)
    try:
        rows = np.loadtxt(block, delimiter=",", dtype=np.int64, comments=None, ndmin=2)
    except ValueError:
        rows = None
    if rows is None or rows.shape != (len(block), 3):
        _parse_strict(block, first_line)
        raise TraceError(first_line, "unparseable block")  # pragma: no cover - strict raises
    return rows


def _parse_strict(block: list[str], first_line: int) -> None:
    """Line by line, raising at the first malformed row."""
    for offset, line in enumerate(block):
        parse_row(line, first_line + offset)


def parse_row(line: str, line_no: int) -> tuple[int, int, int]:
    """One row as (user, minute, bs_id), or a TraceError that says what is wrong."""
    text = line.strip()
    if not text:
        raise TraceError(line_no, "empty line; expected user,minute,bs_id")
    parts = text.split(",")
    if len(parts) != 3:
        raise TraceError(line_no, f"expected 3 fields user,minute,bs_id, got {len(parts)}: "
                         f"{text[:60]!r}")
    values = []
    for name, part in zip(("user", "minute", "bs_id"), parts, strict=True):
        try:
            values.append(int(part.strip()))
        except ValueError:
            raise TraceError(line_no, f"{name} is not an integer: {part.strip()[:30]!r}") from None
    return values[0], values[1], values[2]


def _check_block(rows: npt.NDArray[np.int64], first_line: int, st: _State) -> None:
    """Vectorised semantic checks; raises for the earliest offending row."""
    user, minute, bs = rows[:, 0], rows[:, 1], rows[:, 2]
    prev_user = np.concatenate([[st.last_user], user[:-1]])
    prev_min = np.concatenate([[st.last_minute], minute[:-1]])
    same = user == prev_user
    new = ~same
    problems = {
        "negative": (user < 0) | (minute < 0) | (bs < 0),
        "bs": bs >= st.n_bs,
        "beyond": minute >= st.n_minutes,
        "backwards": same & (minute <= prev_min),
        "gap": same & (minute > prev_min + 1),
        "short": new & (prev_user >= 0) & (prev_min != st.n_minutes - 1),
        "start": new & (minute != 0),
    }
    bad = np.zeros(len(rows), dtype=np.bool_)
    for mask in problems.values():
        bad |= mask
    starts = user[new]
    if st.seen.intersection(starts.tolist()) or len(np.unique(starts)) != len(starts):
        bad |= new & _repeated(user, new, st.seen)
    if bad.any():
        i = int(np.argmax(bad))
        raise TraceError(first_line + i, _message(problems, i, rows, prev_user, prev_min, st))
    st.seen.update(starts.tolist())
    st.last_user, st.last_minute = int(user[-1]), int(minute[-1])
    st.rows += len(rows)


def _repeated(user: npt.NDArray[np.int64], new: npt.NDArray[np.bool_],
              seen: set[int]) -> npt.NDArray[np.bool_]:
    out = np.zeros(len(user), dtype=np.bool_)
    known = set(seen)
    for i in np.flatnonzero(new).tolist():
        u = int(user[i])
        out[i] = u in known
        known.add(u)
    return out


def _message(problems: dict[str, npt.NDArray[np.bool_]], i: int, rows: npt.NDArray[np.int64],
             prev_user: npt.NDArray[np.int64], prev_min: npt.NDArray[np.int64],
             st: _State) -> str:
    u, m, b = (int(x) for x in rows[i])
    pu, pm = int(prev_user[i]), int(prev_min[i])
    if problems["negative"][i]:
        return f"negative value in {u},{m},{b}; user, minute and bs_id must be >= 0"
    if problems["bs"][i]:
        return f"unknown BS {b}: the layout has {st.n_bs} BSs (0 … {st.n_bs - 1})"
    if problems["beyond"][i]:
        return f"minute {m} is past the trace length ({st.n_minutes} minutes)"
    if problems["backwards"][i]:
        return f"minute goes backwards for user {u}: {m} after {pm}"
    if problems["gap"][i]:
        missing = f"minute {pm + 1}" if m == pm + 2 else f"minutes {pm + 1}…{m - 1}"
        return f"gap for user {u}: minute {m} after {pm} ({missing} missing)"
    if problems["short"][i]:
        return f"user {pu} ends at minute {pm}, expected {st.n_minutes - 1} (gap at the end)"
    if problems["start"][i]:
        return f"gap for user {u}: first row is minute {m}, expected 0"
    return f"user {u} appears again; rows of a user must be contiguous"


def _complete_users(pending: _Pending, st: _State, chunk_users: int,
                    final: bool) -> Iterator[TraceChunk]:
    """Emit chunks of whole users from the validated rows kept in `pending`."""
    bs = np.concatenate(pending.bs) if len(pending.bs) > 1 else pending.bs[0]
    ids = np.concatenate(pending.ids) if len(pending.ids) > 1 else pending.ids[0]
    pending.bs.clear()
    pending.ids.clear()
    whole = len(bs) // st.n_minutes
    emitted = 0
    while whole > emitted and (final or whole - emitted >= chunk_users):
        size = min(chunk_users, whole - emitted)
        part = bs[emitted * st.n_minutes:(emitted + size) * st.n_minutes]
        yield TraceChunk(ids[emitted:emitted + size].copy(), part.reshape(size, st.n_minutes))
        emitted += size
    rest = bs[emitted * st.n_minutes:]
    pending.bs.append(rest.copy() if emitted else rest)
    pending.ids.append(ids[emitted:].copy() if emitted else ids)
    pending.rows = len(rest)


def read_trace(source: Source, n_bs: int, n_minutes: int = MINUTES_PER_DAY,
               chunk_users: int = 8192) -> Iterator[TraceChunk]:
    """Stream a CSV trace from a path or an open text file."""
    with _open(source, "r") as fh:
        yield from parse_trace(fh, n_bs, n_minutes, chunk_users)


# ----------------------------------------------------------------------------- writing


def format_chunk(first_user: int, places: npt.NDArray[np.integer],
                 user_ids: npt.NDArray[np.int64] | None = None) -> str:
    """CSV rows of one chunk (no header)."""
    n_users, n_minutes = places.shape
    ids = np.arange(first_user, first_user + n_users) if user_ids is None else user_ids
    users = np.repeat(ids, n_minutes).tolist()
    minutes = np.tile(np.arange(n_minutes), n_users).tolist()
    return "".join(map("{},{},{}\n".format, users, minutes, places.ravel().tolist()))


def write_trace(target: Source, chunks: Iterable[tuple[int, npt.NDArray[np.integer]]]) -> int:
    """Write (first user, places) chunks with a header; returns the number of rows."""
    rows = 0
    with _open(target, "w") as fh:
        fh.write(HEADER + "\n")
        for first, places in chunks:
            step = max(1, WRITE_ROWS // max(1, places.shape[1]))
            for at in range(0, places.shape[0], step):  # bounded text, whatever the chunk
                fh.write(format_chunk(first + at, places[at:at + step]))
            rows += places.size
    return rows


# ----------------------------------------------------------------------------- layouts


def parse_layout(lines: Iterable[str], cell_m: float = 100.0) -> Layout:
    """A layout from `bs_id,x_m,y_m,fog_id` lines; BS ids must be 0 … n−1 in order."""
    xy: list[tuple[float, float]] = []
    fog: list[int] = []
    for line_no, line in enumerate(lines, start=1):
        text = line.strip()
        if line_no == 1 and text.replace(" ", "") == LAYOUT_HEADER:
            continue
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 4:
            raise TraceError(line_no, f"expected {LAYOUT_HEADER}, got {text[:60]!r}")
        try:
            bs, x, y, f = int(parts[0]), float(parts[1]), float(parts[2]), int(parts[3])
        except ValueError:
            raise TraceError(line_no, f"malformed layout row {text[:60]!r}") from None
        if bs != len(xy):
            raise TraceError(line_no, f"bs_id {bs} out of order, expected {len(xy)}")
        if f < 0 or not (np.isfinite(x) and np.isfinite(y)):
            raise TraceError(line_no, "fog_id must be >= 0 and coordinates finite")
        xy.append((x, y))
        fog.append(f)
    if not xy:
        raise TraceError(1, "empty layout: expected bs_id,x_m,y_m,fog_id rows")
    return layout_from_arrays(np.array(xy), np.array(fog, dtype=np.int32), cell_m)


def format_layout(layout: Layout) -> str:
    rows = (f"{i},{x:.1f},{y:.1f},{f}\n" for i, ((x, y), f)
            in enumerate(zip(layout.xy_m.tolist(), layout.fog_of_bs.tolist(), strict=True)))
    return LAYOUT_HEADER + "\n" + "".join(rows)


def read_layout(source: Source) -> Layout:
    with _open(source, "r") as fh:
        return parse_layout(fh)


def write_layout(target: Source, layout: Layout) -> None:
    with _open(target, "w") as fh:
        fh.write(format_layout(layout))


@contextlib.contextmanager
def _open(source: Source, mode: str) -> Iterator[IO[str]]:
    if isinstance(source, str | Path):
        with open(source, mode, encoding="utf-8", newline="") as fh:
            yield fh
    else:
        yield source


__all__ = ["HEADER", "TraceChunk", "TraceError", "format_chunk", "format_layout",
           "parse_layout", "parse_row", "parse_trace", "read_layout", "read_trace",
           "write_layout", "write_trace"]
