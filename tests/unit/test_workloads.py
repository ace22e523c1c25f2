"""The workload families: each one's dirtied-set growth against hand-worked cases, the
in-guest program against its own expectation, pacing, bursts and bad requests."""

from __future__ import annotations

import random

import pytest

from agent.guest.edgeiot_agent.control import RequestError
from agent.guest.edgeiot_agent.workloads import (
    PAGE_SIZE,
    Sweep,
    Uniform,
    Workloads,
    Zipf,
    bursty_active,
    bursty_on_time,
    expected_distinct,
    zipf_weights,
)

MIB = 1024 * 1024


# --------------------------------------------------------------------------- hand-worked


def test_sweep_grows_one_page_per_write_until_the_set_is_full():
    assert expected_distinct("sweep", 7, 10) == 7
    assert expected_distinct("sweep", 15, 10) == 10
    assert Sweep(10).pick(15)[-5:] == [0, 1, 2, 3, 4]  # wraps around


def test_uniform_two_writes_over_four_pages():
    # 4·(1 − (3/4)²) = 4 − 9/4 = 1.75: the second write hits the first page 1 time in 4
    assert expected_distinct("uniform", 2, 4) == pytest.approx(1.75)
    # one write, any set: exactly one page
    assert expected_distinct("uniform", 1, 1000) == pytest.approx(1.0)


def test_zipf_two_writes_over_three_pages():
    # s = 1: p = (1, 1/2, 1/3) / (11/6) = (6, 3, 2)/11
    assert zipf_weights(3, 1.0) == pytest.approx([6 / 11, 3 / 11, 2 / 11])
    # Σ 1 − (1 − p)²: (121 − 25 + 121 − 64 + 121 − 81)/121 = 193/121
    assert expected_distinct("zipf", 2, 3) == pytest.approx(193 / 121)


def test_zipf_grows_slower_than_uniform_which_grows_slower_than_a_sweep():
    for writes in (10, 100, 1000):
        z, u, s = (expected_distinct(k, writes, 1000) for k in ("zipf", "uniform", "sweep"))
        assert z < u < s


def test_bursty_writes_only_in_its_on_phases():
    # on 0.5 s, off 0.5 s: by 1.2 s it has been on 0.5 + 0.2 = 0.7 s
    assert bursty_on_time(1.2, 0.5, 0.5) == pytest.approx(0.7)
    assert bursty_on_time(0.9, 0.5, 0.5) == pytest.approx(0.5)
    assert [bursty_active(t, 0.5, 0.5) for t in (0.0, 0.49, 0.5, 0.99, 1.0)] == \
        [True, True, False, False, True]


def test_unknown_kind_has_no_expectation():
    with pytest.raises(ValueError, match="unknown workload kind"):
        expected_distinct("spiral", 10, 10)


# --------------------------------------------------------------------------- the program


@pytest.mark.parametrize("kind", ["uniform", "zipf"])
def test_random_choosers_match_their_expected_distinct_pages(kind):
    npages, writes, trials = 64, 48, 300
    rng = random.Random(7)
    chooser = Uniform(npages, rng) if kind == "uniform" else Zipf(npages, rng)
    mean = sum(len(set(chooser.pick(writes))) for _ in range(trials)) / trials
    assert mean == pytest.approx(expected_distinct(kind, writes, npages), rel=0.03)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_for(w: Workloads, clock: Clock, seconds: float, dt: float = 0.01) -> None:
    for _ in range(round(seconds / dt)):
        clock.now += dt
        w.step(clock.now)


def test_sweep_program_writes_at_its_rate_and_dirties_whole_pages():
    clock = Clock()
    w = Workloads(clock=clock, seed=1)
    w.written = []
    w.configure("sweep", pages_per_s=1000, working_set_bytes=1 * MIB)  # 256 pages
    run_for(w, clock, 0.2)
    assert len(w.written) == 200  # 1000 pages/s for 0.2 s
    assert len(set(w.written)) == 200  # a sweep never repeats within a pass
    nonzero = sum(1 for p in range(256) if w._buf[p * PAGE_SIZE])
    assert nonzero == 200


def test_uniform_program_follows_the_uniform_growth():
    clock = Clock()
    w = Workloads(clock=clock, seed=3)
    w.written = []
    w.configure("uniform", pages_per_s=2000, working_set_bytes=2 * MIB)  # 512 pages
    run_for(w, clock, 0.5)  # 1000 writes
    expected = expected_distinct("uniform", 1000, 512)  # 512·(1 − (511/512)^1000) ≈ 440
    assert len(w.written) == 1000
    assert len(set(w.written)) == pytest.approx(expected, rel=0.04)


def test_bursty_program_is_silent_when_off():
    clock = Clock()
    w = Workloads(clock=clock, seed=5)
    w.written = []
    w.configure("bursty", pages_per_s=1000, working_set_bytes=1 * MIB, on_s=0.3, off_s=0.2)
    run_for(w, clock, 1.0)
    on = bursty_on_time(1.0, 0.3, 0.2)  # 0.6 s
    assert len(w.written) == pytest.approx(1000 * on, abs=15)


def test_none_stops_and_frees_the_buffer():
    clock = Clock()
    w = Workloads(clock=clock, seed=1)
    w.configure("uniform", pages_per_s=100, working_set_bytes=MIB)
    w.configure("none")
    run_for(w, clock, 0.1)
    assert w.status()["workload"] == {"kind": "none", "pages_per_s": 0, "working_set_bytes": 0,
                                      "achieved_pages_per_s": 0.0, "total_pages": 0}


@pytest.mark.parametrize("request_, message", [
    ({"kind": "spiral"}, "unknown workload kind"),
    ({"kind": 3}, "unknown workload kind"),
    ({"kind": "uniform", "pages_per_s": -1, "working_set_mib": 1}, ">= 0"),
    ({"kind": "uniform", "pages_per_s": float("nan"), "working_set_mib": 1}, "finite"),
    ({"kind": "uniform", "pages_per_s": 10, "working_set_mib": 0}, "at least one page"),
    ({"kind": "zipf", "pages_per_s": 10**7, "working_set_mib": 1}, "pages_per_s"),
])
def test_bad_requests_are_refused_with_one_line(request_, message):
    with pytest.raises(RequestError, match=message):
        Workloads(seed=0).handle({"op": "workload", **request_})


def test_a_working_set_beyond_the_guests_room_is_refused():
    w = Workloads(max_working_set=lambda: MIB, seed=0)
    with pytest.raises(ValueError, match="exceeds the limit"):
        w.configure("uniform", 10, 2 * MIB)


def test_the_cli_offers_exactly_the_guests_kinds():
    from agent.guest.edgeiot_agent.workloads import KINDS
    from orchestrator.commands.vm import WORKLOAD_KINDS
    assert WORKLOAD_KINDS == KINDS


def test_cli_refuses_an_unknown_kind_in_one_line(tmp_path, capsys):
    from orchestrator.cli import main
    status = main(["--state-dir", str(tmp_path), "vm", "workload", "v1", "--kind", "spiral"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "spiral" in err
