"""The stalled-partition detector on plain values: what counts as stuck and what does not."""

from __future__ import annotations

import pytest

from streams.watchdog import Stall, StallDetector

TP0, TP1 = ("events", 0), ("events", 1)


def test_a_partition_with_messages_waiting_and_no_progress_stalls_after_the_timeout() -> None:
    d = StallDetector(120)
    assert d.observe(0, {TP0: (10, 50)}) == []
    assert d.observe(119.9, {TP0: (10, 50)}) == []
    assert d.observe(120, {TP0: (10, 50)}) == [Stall("events", 0, 10, 50, 120)]
    # the highwater keeps growing: still the same stall, still counted from the start
    assert d.observe(200, {TP0: (10, 80)}) == [Stall("events", 0, 10, 80, 200)]


def test_an_idle_partition_with_nothing_waiting_is_never_stalled() -> None:
    d = StallDetector(10)
    for now in range(0, 1000, 7):
        assert d.observe(now, {TP0: (42, 42)}) == []


def test_messages_arriving_at_an_idle_partition_start_the_clock_then() -> None:
    d = StallDetector(10)
    d.observe(0, {TP0: (42, 42)})
    assert d.observe(500, {TP0: (42, 43)}) == []  # idle for ages, but waiting only since now
    assert d.observe(509, {TP0: (42, 43)}) == []
    assert [s.partition for s in d.observe(510, {TP0: (42, 43)})] == [0]


def test_progress_resets_the_clock() -> None:
    d = StallDetector(10)
    d.observe(0, {TP0: (10, 100)})
    assert d.observe(9, {TP0: (11, 100)}) == []  # moved by one
    assert d.observe(18, {TP0: (11, 100)}) == []
    assert d.observe(19, {TP0: (11, 100)})[0].seconds == 10


def test_rebalancing_or_recovering_pauses_the_clock_and_it_restarts_after() -> None:
    d = StallDetector(10)
    d.observe(0, {TP0: (10, 100)})
    assert d.observe(9, {TP0: (10, 100)}, paused=True) == []
    assert d.observe(30, {TP0: (10, 100)}, paused=True) == []
    assert d.observe(39, {TP0: (10, 100)}) == []  # the clock restarted at 30
    assert d.observe(40, {TP0: (10, 100)})[0].seconds == 10


def test_a_partition_no_longer_assigned_is_forgotten() -> None:
    d = StallDetector(10)
    d.observe(0, {TP0: (10, 100), TP1: (5, 100)})
    assert [s.partition for s in d.observe(10, {TP0: (10, 100), TP1: (5, 100)})] == [0, 1]
    assert [s.partition for s in d.observe(11, {TP0: (10, 100)})] == [0]
    # assigned again later (same position, e.g. back from another worker): a fresh clock
    assert [s.partition for s in d.observe(12, {TP0: (10, 100), TP1: (5, 100)})] == [0]
    assert [s.partition for s in d.observe(22, {TP0: (10, 100), TP1: (5, 100)})] == [0, 1]


def test_each_stall_is_reported_once_and_again_after_it_cleared() -> None:
    d = StallDetector(10)
    d.observe(0, {TP0: (10, 100)})
    first = d.observe(10, {TP0: (10, 100)})
    assert d.newly_reported(first) == first
    assert d.newly_reported(d.observe(11, {TP0: (10, 100)})) == []
    assert d.observe(12, {TP0: (20, 100)}) == []  # moved: cleared
    again = d.observe(22, {TP0: (20, 100)})
    assert [s.position for s in d.newly_reported(again)] == [20]


def test_zero_disables_and_a_negative_timeout_is_refused() -> None:
    d = StallDetector(0)
    assert not d.enabled
    d.observe(0, {TP0: (10, 100)})
    assert d.observe(10_000, {TP0: (10, 100)}) == []
    with pytest.raises(ValueError, match="stall timeout"):
        StallDetector(-1)


def test_the_stall_as_healthz_names_it() -> None:
    assert Stall("events", 3, 7, 9, 12.345).as_dict() == {
        "topic": "events",
        "partition": 3,
        "position": 7,
        "highwater": 9,
        "stuck_s": 12.3,
    }
