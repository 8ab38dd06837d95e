"""The one offset tracker (commit watermarks) and key routing to lanes, on plain values."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from keel.offsets import OffsetTracker, slot_for

TP = ("jobs.email", 0)


def test_commit_moves_only_past_a_contiguous_prefix() -> None:
    tracker = OffsetTracker()
    entries = [tracker.track(TP, off) for off in range(10, 15)]
    assert tracker.committable() == {}
    entries[1].done = True
    entries[2].done = True
    assert tracker.committable() == {}  # offset 10 still runs
    entries[0].done = True
    assert tracker.committable() == {TP: 13}
    tracker.mark_committed({TP: 13})
    assert tracker.committable() == {}
    tracker.unmark_committed({TP})  # the commit failed: offered again
    assert tracker.committable() == {TP: 13}
    tracker.mark_committed({TP: 13})
    assert tracker.in_flight() == 2
    entries[3].done = entries[4].done = True
    assert tracker.committable() == {TP: 15}
    assert tracker.in_flight() == 0


def test_partitions_are_independent() -> None:
    tracker = OffsetTracker()
    slow = tracker.track(("a", 0), 5)
    fast = tracker.track(("a", 1), 7)
    fast.done = True
    assert tracker.committable() == {("a", 1): 8}
    assert not tracker.settled({("a", 0)})
    slow.cancelled = True
    assert tracker.settled({("a", 0)})
    assert tracker.committable() == {("a", 1): 8}  # cancelled is handed back, not committed


def test_forget_cancels_what_was_not_started() -> None:
    tracker = OffsetTracker()
    entry = tracker.track(TP, 1)
    tracker.forget({TP})
    assert entry.cancelled
    assert tracker.committable() == {}
    assert tracker.in_flight() == 0


@given(st.permutations(list(range(30))))
def test_committed_offset_never_passes_an_unfinished_job(order: list[int]) -> None:
    tracker = OffsetTracker()
    entries = [tracker.track(TP, off) for off in range(30)]
    finished: set[int] = set()
    for off in order:
        entries[off].done = True
        finished.add(off)
        commit = tracker.committable().get(TP)
        if commit is not None:
            tracker.mark_committed({TP: commit})
            assert all(o in finished for o in range(commit))
    assert tracker.committable() == {} or tracker.committable() == {TP: 30}


def test_a_record_with_several_effects_finishes_with_the_last() -> None:
    tracker = OffsetTracker()
    event = tracker.track(TP, 3, left=2)  # two subscribers want it
    event.finish()
    assert tracker.committable() == {}
    event.finish()
    assert tracker.committable() == {TP: 4}
    assert tracker.track(TP, 4, left=0).done  # nobody wants it: finished as read


def test_slot_is_stable_per_key_and_spreads_keys() -> None:
    assert slot_for(b"user-1", 4) == slot_for(b"user-1", 4)
    assert slot_for(b"anything", 1) == 0
    assert slot_for(None, 4, fallback=6) == 2
    used = {slot_for(f"user-{i}".encode(), 4) for i in range(100)}
    assert used == {0, 1, 2, 3}
