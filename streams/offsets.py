"""The source offsets a worker has applied: no record is applied, and no offset committed,
past a record of the same partition that was not applied.

Why Keel keeps this itself: the engine's watermarks make a replay harmless by skipping
every event at or below the offset a user's state was last written at. The price is that a
hole is forever: if a partition's record at offset o never reached the engine while a later
record of the same user did, o sits below that user's watermark, and every replay (this
worker's, or the next owner's after a crash) skips it. And Faust's consumer makes holes
and commits past them. Found by tests/faults:
- it acks records the agent never applied: records it skips as "not for this generation"
  or "flow suspended" during a rebalance, and every event `take_events` buffered, even
  when the agent raised on them; the acks then count toward the committed offset;
- its commit starts from the acked offsets alone when it has no committed offset for the
  partition (forgotten at every revoke), and tolerates one missing offset right after the
  committed one (`_new_offset`: `min(acked) - committed > 1`);
- it can hand the agent a partition's records with a record missing, or one twice, across
  a rebalance (its fetcher drops records below its read offset, which a seek sets).

So the runtime asks `plan` before it applies a partition's part of a batch: records it
applied already are left out, and at a hole it applies what comes before, then seeks the
partition back to the hole; `applied` is recorded once the state writes are queued (Faust
flushes them before it commits), and Faust's ack only counts an applied record (see
`StreamsApp._guard_acks`). The committed offset therefore never passes an effect.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

# A hole met this many times at the same place after seeking back is taken for offsets the
# log does not hold (transaction markers, compaction), not for records that went missing.
REAL_GAP_AFTER = 3


@dataclass(frozen=True)
class Plan:
    """Apply `offsets[lo:hi]`; then, when `seek` is set, seek the partition back to it."""

    lo: int
    hi: int
    seek: int | None = None


class AppliedOffsets:
    def __init__(self) -> None:
        self._next: dict[Hashable, int] = {}  # partition -> offset after the last applied
        self._holes: dict[Hashable, tuple[int, int, int]] = {}  # -> (expected, got, times)

    def clear(self) -> None:
        """After a rebalance: every partition restarts from its committed offset."""
        self._next.clear()
        self._holes.clear()

    def next(self, partition: Hashable) -> int | None:
        return self._next.get(partition)

    def is_applied(self, partition: Hashable, offset: int) -> bool:
        return offset < self._next.get(partition, -1)

    def plan(self, partition: Hashable, offsets: Sequence[int], committed: int | None) -> Plan:
        """What to apply of one partition's records (in offset order): `committed` is where
        the consumer started the partition (None: no commit, the log's start)."""
        expected = self._next.get(partition, committed)
        lo = 0
        if expected is not None:
            while lo < len(offsets) and offsets[lo] < expected:
                lo += 1  # applied already: delivered twice, or replayed after a seek
            hole = lo < len(offsets) and offsets[lo] > expected
            if hole and not self._known_gap(partition, expected, offsets[lo]):
                return Plan(lo, lo, expected)
        hi = lo + 1 if lo < len(offsets) else lo
        while hi < len(offsets) and offsets[hi] == offsets[hi - 1] + 1:
            hi += 1
        if hi < len(offsets):  # a hole inside the batch: apply up to it, fetch it again
            if self._known_gap(partition, offsets[hi - 1] + 1, offsets[hi]):
                return Plan(lo, len(offsets))  # pragma: no cover - not in Keel's topics
            return Plan(lo, hi, offsets[hi - 1] + 1)
        return Plan(lo, hi)

    def _known_gap(self, partition: Hashable, expected: int, got: int) -> bool:
        seen = self._holes.get(partition)
        times = seen[2] + 1 if seen is not None and seen[:2] == (expected, got) else 1
        self._holes[partition] = (expected, got, times)
        if times < REAL_GAP_AFTER:
            log.warning(
                "partition %s: record %d missing before %d; not applying past it, fetching "
                "it again",
                partition,
                expected,
                got,
            )
            return False
        log.warning("partition %s: offsets %d..%d are not in the log", partition, expected, got - 1)
        return True

    def applied(self, partition: Hashable, last: int) -> None:
        self._next[partition] = last + 1
        self._holes.pop(partition, None)
