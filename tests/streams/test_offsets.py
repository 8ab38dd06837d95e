"""AppliedOffsets: every record of a partition applied in order, none skipped, none twice."""

from __future__ import annotations

from keel.streams.offsets import AppliedOffsets, Plan


def test_a_partition_starts_where_it_is_told_and_takes_the_next_run_whole() -> None:
    offsets = AppliedOffsets()
    assert offsets.plan("p0", [10, 11, 12], start=10) == Plan(range(3), (), 12)
    offsets.applied("p0", 12)
    assert offsets.plan("p0", [13, 14], start=0) == Plan(range(2), (), 14)  # start unused


def test_runs_missing_before_and_among_the_records_are_named_to_be_read() -> None:
    offsets = AppliedOffsets()
    assert offsets.plan("p0", [12, 13], start=10) == Plan([0, 1], [(10, 12)], 13)
    offsets.applied("p0", 9)
    assert offsets.plan("p0", [10, 11, 15, 16, 20], start=0) == Plan(
        [0, 1, 2, 3, 4], [(12, 15), (17, 20)], 20
    )


def test_records_applied_already_are_left_out() -> None:
    offsets = AppliedOffsets()
    offsets.applied("p0", 12)
    assert offsets.plan("p0", [11, 12, 13, 14], start=5) == Plan([2, 3], [], 14)
    assert offsets.plan("p0", [12], start=5) == Plan([], [], -1)  # delivered twice: nothing
    assert offsets.plan("p0", [13, 13, 14], start=5) == Plan([0, 2], [], 14)  # twice in one


def test_applied_counts_only_offsets_before_the_next_one_and_a_rebalance_forgets() -> None:
    offsets = AppliedOffsets()
    offsets.applied("p0", 12)
    assert offsets.is_applied("p0", 12) and not offsets.is_applied("p0", 13)
    assert not offsets.is_applied("p1", 0)
    offsets.clear()
    assert not offsets.is_applied("p0", 12)
    assert offsets.next("p0") is None
    assert offsets.plan("p0", [20], start=20) == Plan(range(1), (), 20)
