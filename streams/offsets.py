"""The source offsets a worker has applied: every record of a partition is applied in
offset order, none skipped, and no offset is committed past a record not applied.

Why Keel keeps this itself: the engine's watermarks make a replay harmless by skipping
every event at or below the offset a user's state was last written at. The price is that a
hole is forever: if a partition's record at offset o never reached the engine while a later
record of the same user did, o sits below that user's watermark, and every replay (this
worker's, or the next owner's after a crash) skips it. And Faust's consumer makes holes
and commits past them. Found by tests/faults:
- it acks records the agent never applied: records it skips as "not for this generation"
  or "flow suspended" during a rebalance, and every event `take_events` buffered, even
  when the agent raised on them; the acks then count toward the committed offset;
- it tolerates one missing offset right after the committed one (`_new_offset`:
  `min(acked) - committed > 1`);
- its fetcher drops records below its read offset, which a seek or an in-flight fetch sets,
  so a partition's records can reach the agent with a run missing, or one twice;
- and when its fetcher sees such a jump it records the missing run as a "gap" that its
  next commit counts as done (`_add_gap`, for compacted topics and transaction markers):
  one ack of any later record then commits past the whole run, applied or not.

So the runtime asks `plan` before it applies a partition's part of a batch: records it
applied already are left out, and every run missing before or among the rest is named, to
be read from the log itself and applied in its place (keel.streams.log_reader) before anything
after it. `applied` is recorded once the state writes are queued (Faust flushes them
before it commits); Faust's ack only counts an applied record, and its fetcher's gaps are
ignored for Keel's topics (see `StreamsApp._guard_acks`). The committed offset therefore
never passes an effect.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Plan:
    """Apply the records at positions `keep` of the batch, and before them the runs of
    offsets `missing` (each `[start, end)`) read from the log; `last` is the offset after
    which the partition then stands (-1: nothing to apply)."""

    keep: Sequence[int]
    missing: Sequence[tuple[int, int]] = field(default_factory=tuple)
    last: int = -1


class AppliedOffsets:
    def __init__(self) -> None:
        self._next: dict[Hashable, int] = {}  # partition -> offset after the last applied

    def clear(self) -> None:
        """After a rebalance: every partition restarts from its committed offset."""
        self._next.clear()

    def next(self, partition: Hashable) -> int | None:
        return self._next.get(partition)

    def is_applied(self, partition: Hashable, offset: int) -> bool:
        return offset < self._next.get(partition, -1)

    def plan(self, partition: Hashable, offsets: Sequence[int], start: int) -> Plan:
        """What to apply of one partition's records (as delivered, in offset order).
        `start` is where the partition starts when this worker applied nothing of it since
        its assignment: the group's committed offset, or the log's first offset."""
        expected = self._next.get(partition, start)
        n = len(offsets)
        if n and offsets[0] == expected and offsets[-1] - expected == n - 1:
            return Plan(range(n), (), offsets[-1])  # the usual batch: the next run, whole
        keep: list[int] = []
        missing: list[tuple[int, int]] = []
        for i, offset in enumerate(offsets):
            if offset < expected:
                continue  # applied already: delivered twice, or replayed after a rebalance
            if offset > expected:
                missing.append((expected, offset))
            keep.append(i)
            expected = offset + 1
        return Plan(keep, missing, expected - 1 if keep else -1)

    def applied(self, partition: Hashable, last: int) -> None:
        self._next[partition] = last + 1
