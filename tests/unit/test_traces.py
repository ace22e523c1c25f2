"""CSV traces: round trips, streaming in chunks, and every rejection naming its line."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.model import mobility as mb
from orchestrator.model import traces as tr


def csv(rows: list[str], header: bool = True) -> list[str]:
    return ([tr.HEADER + "\n"] if header else []) + [r + "\n" for r in rows]


def day(user: int, places: list[int]) -> list[str]:
    return [f"{user},{m},{b}" for m, b in enumerate(places)]


def parse(lines: list[str], n_bs: int = 10, n_minutes: int = 3, **kw: int) -> list[tr.TraceChunk]:
    return list(tr.parse_trace(lines, n_bs, n_minutes, **kw))


def test_round_trip_through_a_file(tmp_path: object) -> None:
    lay = mb.make_layout(mb.LayoutParams(n_bs=300, width_m=5000, height_m=5000))
    m = mb.generate_chunk(lay, 30, seed=1)
    path = f"{tmp_path}/t.csv"
    assert tr.write_trace(path, [(0, m[:20]), (20, m[20:])]) == 30 * 1440
    chunks = list(tr.read_trace(path, lay.n_bs, chunk_users=8))
    assert [c.places.shape[0] for c in chunks] == [8, 8, 8, 6]
    assert (np.concatenate([c.places for c in chunks]) == m).all()
    assert np.concatenate([c.users for c in chunks]).tolist() == list(range(30))


def test_header_is_optional_and_user_ids_are_kept() -> None:
    rows = day(7, [1, 1, 2]) + day(3, [4, 4, 4])
    for lines in (csv(rows), csv(rows, header=False)):
        (chunk,) = parse(lines)
        assert chunk.users.tolist() == [7, 3]
        assert chunk.places.tolist() == [[1, 1, 2], [4, 4, 4]]


def test_blocks_may_split_a_user() -> None:
    rows = day(0, [1, 2, 3]) + day(1, [3, 2, 1]) + day(2, [0, 0, 0])
    chunks = parse(csv(rows), block_rows=2, chunk_users=2)
    assert [c.users.tolist() for c in chunks] == [[0, 1], [2]]


@pytest.mark.parametrize(("rows", "line", "needle"), [
    (["0,0,1", "0,1,1", "0,2,99"], 4, "unknown BS 99"),
    (["0,0,1", "0,1,1", "0,1,1"], 4, "minute goes backwards for user 0: 1 after 1"),
    (["0,0,1", "0,1,1", "0,0,1"], 4, "minute goes backwards for user 0: 0 after 1"),
    (["0,0,1", "0,2,1"], 3, "gap for user 0: minute 2 after 0 (minute 1 missing)"),
    (["0,0,1", "0,1,1", "1,0,1", "1,1,1", "1,2,1"], 4, "user 0 ends at minute 1, expected 2"),
    (["0,1,1"], 2, "first row is minute 1, expected 0"),
    (["0,0,1", "0,1,1", "0,2,1", "1,0,1", "1,1,1", "1,2,1", "0,0,1"], 8, "user 0 appears again"),
    (["0,0,1", "0,1"], 3, "expected 3 fields"),
    (["0,0,1", "0,x,1"], 3, "minute is not an integer: 'x'"),
    (["0,0,1", "0,1.5,1"], 3, "minute is not an integer"),
    (["0,0,1", "", "0,2,1"], 3, "empty line"),
    (["0,0,-1"], 2, "negative value"),
    (["0,0,1", "0,1,1", "0,2,1", "0,3,1"], 5, "minute 3 is past the trace length"),
    (["0,0,1", "0,1,1"], 3, "user 0 ends at minute 1, expected 2"),
    ([], 2, "no rows"),
])
def test_malformed_traces_name_the_line(rows: list[str], line: int, needle: str) -> None:
    with pytest.raises(tr.TraceError, match="^line ") as err:
        parse(csv(rows))
    assert err.value.line == line
    assert needle in str(err.value)


def test_error_line_is_exact_deep_in_a_big_trace() -> None:
    lay_rows = [r for u in range(50) for r in day(u, [1] * 3)]
    lay_rows[100] = "33,1,5000"
    with pytest.raises(tr.TraceError) as err:
        parse(csv(lay_rows), block_rows=16)
    assert err.value.line == 102 and "unknown BS 5000" in str(err.value)


def test_parsing_streams_without_reading_the_whole_input() -> None:
    """The first chunk comes out after about one chunk of rows, not after the whole file."""
    read = 0

    def lines() -> object:
        nonlocal read
        yield tr.HEADER + "\n"
        for u in range(1000):
            for m in range(3):
                read += 1
                yield f"{u},{m},{u % 10}\n"

    chunks = tr.parse_trace(lines(), 10, 3, chunk_users=4, block_rows=5)  # type: ignore[arg-type]
    first = next(chunks)
    assert first.users.tolist() == [0, 1, 2, 3] and read <= 4 * 3 + 5
    rest = list(chunks)
    assert read == 3000 and sum(len(c.users) for c in rest) == 996
    assert max(len(c.users) for c in rest) == 4
    assert np.concatenate([c.users for c in rest]).tolist() == list(range(4, 1000))


def test_writing_formats_big_chunks_in_slices() -> None:
    m = np.arange(3 * 5, dtype=np.int32).reshape(3, 5) % 7
    out = io.StringIO()
    saved, tr.WRITE_ROWS = tr.WRITE_ROWS, 7  # one user per slice
    try:
        assert tr.write_trace(out, [(10, m)]) == 15
    finally:
        tr.WRITE_ROWS = saved
    assert out.getvalue() == tr.HEADER + "\n" + tr.format_chunk(10, m)


def test_empty_input() -> None:
    with pytest.raises(tr.TraceError, match="line 1: empty trace"):
        parse([])


def test_layout_round_trip() -> None:
    lay = mb.make_layout(mb.LayoutParams(n_bs=50, width_m=3000, height_m=3000, n_fog=5))
    back = tr.parse_layout(io.StringIO(tr.format_layout(lay)))
    assert back.n_bs == 50 and (back.fog_of_bs == lay.fog_of_bs).all()
    assert np.allclose(back.xy_m + lay.xy_m.min(axis=0), lay.xy_m, atol=0.06)
    with pytest.raises(tr.TraceError, match="line 3: bs_id 5 out of order"):
        tr.parse_layout([tr.LAYOUT_HEADER, "0,1,1,0", "5,2,2,0"])
    with pytest.raises(tr.TraceError, match="line 2: malformed"):
        tr.parse_layout([tr.LAYOUT_HEADER, "0,a,1,0"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 9), min_size=4, max_size=4), min_size=1, max_size=8),
       st.integers(1, 5), st.integers(1, 7))
def test_any_valid_trace_round_trips(rows: list[list[int]], chunk: int, block: int) -> None:
    m = np.array(rows, dtype=np.int32)
    text = tr.HEADER + "\n" + tr.format_chunk(0, m)
    got = list(tr.parse_trace(io.StringIO(text), 10, 4, chunk_users=chunk, block_rows=block))
    assert all(c.places.shape[0] <= chunk for c in got)
    assert (np.concatenate([c.places for c in got]) == m).all()
