"""The one offset tracker of Keel's consumers, as pure data structures (no Kafka imports).

Effects finish out of order (jobs run on several threads, webhooks on several lanes); a
partition's committable offset only moves past a contiguous prefix of finished records, so
a crash never skips a record whose effect was not done. `slot_for` picks a record's lane:
one key always the same lane, whose queue is FIFO, so records of one key keep their order.
"""

from __future__ import annotations

import zlib
from collections import deque

Key = tuple[str, int]  # (topic, partition)


class Entry:
    """One record's place in its partition's queue. It is finished when each of the `left`
    effects it waits for (a job: one; an event: one per subscriber) called `finish`.

    Setting a bool attribute is atomic under the GIL, so the thread that ran an effect
    marks it without a lock and only the loop's thread reads and pops: no lock on the hot
    path (a record with several effects is finished from one thread).
    """

    __slots__ = ("cancelled", "done", "left", "offset")

    def __init__(self, offset: int, left: int = 1) -> None:
        self.offset = offset
        self.left = left
        self.done = left <= 0
        # Handed back (partition revoked, or a held retry dropped): must not be started.
        self.cancelled = False

    def expect(self, effects: int) -> None:
        """How many effects the record waits for, said once it was read (0: finished)."""
        self.left = effects
        self.done = effects <= 0

    def finish(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.done = True


class OffsetTracker:
    """Offsets read but not yet committable, per partition, in the order they were read."""

    def __init__(self) -> None:
        self._pending: dict[Key, deque[Entry]] = {}
        self._next: dict[Key, int] = {}  # committable, not yet committed
        self._committed: dict[Key, int] = {}

    def track(self, tp: Key, offset: int, left: int = 1) -> Entry:
        entry = Entry(offset, left)
        queue = self._pending.get(tp)
        if queue is None:
            queue = self._pending[tp] = deque()
        queue.append(entry)
        return entry

    def in_flight(self) -> int:
        """Records read whose partition prefix has not been released yet."""
        self._advance()
        return sum(len(q) for q in self._pending.values())

    def _advance(self) -> None:
        for tp in self._pending:
            self.pending(tp)

    def committable(self) -> dict[Key, int]:
        """Next offsets to commit (offset of the next record to read) that moved since the
        last `mark_committed`."""
        self._advance()
        return {tp: off for tp, off in self._next.items() if self._committed.get(tp, -1) != off}

    def mark_committed(self, offsets: dict[Key, int]) -> None:
        self._committed.update(offsets)

    def unmark_committed(self, partitions: set[Key]) -> None:
        """A commit failed: offer these partitions' offsets again."""
        for tp in partitions:
            self._committed.pop(tp, None)

    def pending(self, tp: Key) -> int:
        """Records of one partition read and not released yet (its read-ahead)."""
        queue = self._pending.get(tp)
        if not queue:
            return 0
        last = None
        while queue and queue[0].done:
            last = queue.popleft().offset
        if last is not None:
            self._next[tp] = last + 1
        return len(queue)

    def settled(self, partitions: set[Key]) -> bool:
        """Every record read from these partitions is finished or handed back."""
        return all(
            entry.done or entry.cancelled
            for tp in partitions
            for entry in self._pending.get(tp, ())
        )

    def forget(self, partitions: set[Key] | None = None) -> None:
        """Drop the state of revoked partitions (all when None): their records now belong to
        another member, so the ones not started yet are cancelled and none is committed
        from here."""
        targets = set(self._pending) | set(self._next) if partitions is None else partitions
        for tp in targets:
            for entry in self._pending.pop(tp, ()):
                entry.cancelled = True
            self._next.pop(tp, None)
            self._committed.pop(tp, None)


def slot_for(key: bytes | None, slots: int, fallback: int = 0) -> int:
    """The lane for a key: stable across processes (crc32), so ordering per key holds."""
    if slots <= 1:
        return 0
    if key is None:
        return fallback % slots
    return zlib.crc32(key) % slots
