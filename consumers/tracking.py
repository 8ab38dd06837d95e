"""In-flight bookkeeping of a job worker, as pure data structures (no Kafka imports).

- `OffsetTracker`: which offsets may be committed. Jobs finish out of order (several run at
  once); a partition's committable offset only moves past a contiguous prefix of finished
  jobs, so a crash never skips a job whose side effect was not done.
- `slot_for`: the runner a job goes to; one key always maps to the same runner, whose queue
  is FIFO, so jobs of one key run in order.
- `DelayQueue`: retries read before they are due wait here (not blocking other jobs).
"""

from __future__ import annotations

import heapq
import itertools
import zlib
from collections import deque
from collections.abc import Hashable
from collections.abc import Set as AbstractSet
from typing import Any

TopicPartition = tuple[str, int]


class Entry:
    """One job's place in its partition's queue; `done` is set by the thread that ran it.

    Setting a bool attribute is atomic under the GIL, so runner threads mark completion
    without a lock and only the poll thread reads and pops: the hot path takes no lock.
    """

    __slots__ = ("cancelled", "done", "offset")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.done = False
        # Handed back (partition revoked, or a delayed retry dropped): must not be started.
        self.cancelled = False


class OffsetTracker:
    """Offsets read but not yet committable, per partition, in the order they were read."""

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, deque[Entry]] = {}
        self._next: dict[TopicPartition, int] = {}  # committable, not yet committed
        self._committed: dict[TopicPartition, int] = {}

    def track(self, tp: TopicPartition, offset: int) -> Entry:
        entry = Entry(offset)
        queue = self._pending.get(tp)
        if queue is None:
            queue = self._pending[tp] = deque()
        queue.append(entry)
        return entry

    def in_flight(self) -> int:
        """Jobs read whose partition prefix has not been released yet."""
        self._advance()
        return sum(len(q) for q in self._pending.values())

    def _advance(self) -> None:
        for tp, queue in self._pending.items():
            last = None
            while queue and queue[0].done:
                last = queue.popleft().offset
            if last is not None:
                self._next[tp] = last + 1

    def committable(self) -> dict[TopicPartition, int]:
        """Next offsets to commit (offset of the next job to read) that moved since the last
        `mark_committed`."""
        self._advance()
        return {tp: off for tp, off in self._next.items() if self._committed.get(tp, -1) != off}

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update(offsets)

    def unmark_committed(self, partitions: set[TopicPartition]) -> None:
        """A commit failed: offer these partitions' offsets again."""
        for tp in partitions:
            self._committed.pop(tp, None)

    def pending_partitions(self) -> set[TopicPartition]:
        self._advance()
        return {tp for tp, q in self._pending.items() if q}

    def settled(self, partitions: set[TopicPartition]) -> bool:
        """Every job read from these partitions is finished or handed back."""
        return all(
            entry.done or entry.cancelled
            for tp in partitions
            for entry in self._pending.get(tp, ())
        )

    def forget(self, partitions: set[TopicPartition] | None = None) -> None:
        """Drop the state of revoked partitions (all when None): their jobs now belong to
        another worker, so the ones not started yet are cancelled and none is committed
        from here."""
        targets = set(self._pending) | set(self._next) if partitions is None else partitions
        for tp in targets:
            for entry in self._pending.pop(tp, ()):
                entry.cancelled = True
            self._next.pop(tp, None)
            self._committed.pop(tp, None)


def slot_for(key: bytes | None, slots: int, fallback: int = 0) -> int:
    """The runner for a key: stable across processes (crc32), so ordering per key holds."""
    if slots <= 1:
        return 0
    if key is None:
        return fallback % slots
    return zlib.crc32(key) % slots


class DelayQueue:
    """Items ordered by due time (epoch ms); ties keep insertion order."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Hashable, Any]] = []
        self._seq = itertools.count()

    def push(self, due_ms: int, item: Any, group: Hashable = None) -> None:
        heapq.heappush(self._heap, (due_ms, next(self._seq), group, item))

    def pop_due(self, now_ms: int) -> list[Any]:
        out = []
        while self._heap and self._heap[0][0] <= now_ms:
            out.append(heapq.heappop(self._heap)[3])
        return out

    def next_due(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def drop_groups(self, groups: AbstractSet[Hashable] | None = None) -> list[Any]:
        """Remove and return the items of some groups (e.g. revoked partitions), or all."""
        if groups is None:
            dropped = [item[3] for item in self._heap]
            self._heap.clear()
            return dropped
        dropped = [item[3] for item in self._heap if item[2] in groups]
        self._heap = [item for item in self._heap if item[2] not in groups]
        heapq.heapify(self._heap)
        return dropped

    def __len__(self) -> int:
        return len(self._heap)
