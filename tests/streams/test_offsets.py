"""AppliedOffsets: nothing applied, and no ack counted, past a record not applied."""

from __future__ import annotations

from streams.offsets import REAL_GAP_AFTER, AppliedOffsets, Plan


def test_a_partition_starts_at_its_committed_offset_or_anywhere_without_one() -> None:
    offsets = AppliedOffsets()
    assert offsets.plan("p0", [10, 11, 12], committed=10) == Plan(0, 3)
    assert offsets.plan("p1", [500, 501], committed=None) == Plan(0, 2)


def test_a_record_missing_before_the_batch_is_fetched_again_and_nothing_applied() -> None:
    offsets = AppliedOffsets()
    assert offsets.plan("p0", [12, 13], committed=10) == Plan(0, 0, seek=10)
    offsets.applied("p0", 11)  # the records at 10 and 11 came again and were applied
    assert offsets.plan("p0", [12, 13], committed=10) == Plan(0, 2)


def test_records_applied_already_are_left_out() -> None:
    offsets = AppliedOffsets()
    offsets.applied("p0", 12)
    assert offsets.plan("p0", [11, 12, 13, 14], committed=5) == Plan(2, 4)
    assert offsets.plan("p0", [12], committed=5) == Plan(1, 1)  # delivered twice: nothing


def test_a_hole_inside_a_batch_applies_what_comes_before_it() -> None:
    offsets = AppliedOffsets()
    offsets.applied("p0", 12)
    assert offsets.plan("p0", [13, 14, 16, 17], committed=5) == Plan(0, 2, seek=15)


def test_a_hole_met_again_and_again_at_the_same_place_is_offsets_the_log_lacks() -> None:
    offsets = AppliedOffsets()
    offsets.applied("p0", 9)
    for _ in range(REAL_GAP_AFTER - 1):
        assert offsets.plan("p0", [12, 13], committed=None) == Plan(0, 0, seek=10)
    assert offsets.plan("p0", [12, 13], committed=None) == Plan(0, 2)


def test_applied_counts_only_offsets_before_the_next_one_and_a_rebalance_forgets() -> None:
    offsets = AppliedOffsets()
    offsets.applied("p0", 12)
    assert offsets.is_applied("p0", 12) and not offsets.is_applied("p0", 13)
    assert not offsets.is_applied("p1", 0)
    offsets.clear()
    assert not offsets.is_applied("p0", 12)
    assert offsets.plan("p0", [20], committed=20) == Plan(0, 1)
