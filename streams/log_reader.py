"""Reads runs of a partition straight from the log, beside Faust's consumer.

Faust's fetcher can hand the agent a partition's records with a run missing (see
keel.streams.offsets). Seeking its consumer back to the hole was tried first: the seek races the
fetch already in flight, whose records move the fetcher's read offset past the hole again,
so the refetched run is dropped once more, and a hole met again and again had to be taken
for offsets the log lacks at last: the very loss it meant to prevent. Reading the run here
instead is deterministic: an assign-only consumer of its own (no group membership, no
commit) reads `[start, end)` and the worker applies it in its place. The log's first offset
bounds it: what retention deleted is read as absent, as any consumer would find it.
"""

from __future__ import annotations

import logging
import time
from typing import cast

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from keel.errors import KeelError
from keel.kafka import kafka_call, make_consumer
from keel.settings import KeelSettings

log = logging.getLogger(__name__)


class LogReadError(KeelError):
    """A missing run could not be read from the log in time (its leader unreachable)."""


class LogReader:
    def __init__(self, settings: KeelSettings, group_id: str, timeout: float = 60.0) -> None:
        self._settings = settings
        self._group_id = group_id  # only to ask for the group's committed offsets
        self._timeout = timeout
        self._consumer: Consumer | None = None

    def _client(self) -> Consumer:
        if self._consumer is None:
            self._consumer = make_consumer(
                self._group_id,
                self._settings,
                **{"enable.partition.eof": True, "logger": logging.getLogger("librdkafka")},
            )
        return self._consumer

    def start(self, topic: str, partition: int) -> int:
        """Where a partition starts for the group: its committed offset, or without one the
        log's first offset (the group reads from the earliest, `auto.offset.reset`)."""
        consumer = self._client()
        tp = TopicPartition(topic, partition)
        with kafka_call(f"reading the committed offset of {topic}[{partition}]", 30):
            committed = consumer.committed([tp], timeout=30)[0].offset
            if committed >= 0:
                return int(committed)
            low, _high = consumer.get_watermark_offsets(tp, timeout=30)
        return int(low)

    def read(self, topic: str, partition: int, start: int, end: int) -> list[Message]:
        """The records of `topic[partition]` at offsets `start` to `end` (excluded) that the
        log holds, in order."""
        consumer = self._client()
        consumer.assign([TopicPartition(topic, partition, start)])
        records: list[Message] = []
        deadline = time.monotonic() + self._timeout
        try:
            while time.monotonic() < deadline:
                for msg in consumer.consume(500, 1.0):
                    error = msg.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            return records  # the log ends before `end`: nothing more of it
                        log.warning("reading %s[%d]: %s", topic, partition, error.str())
                        continue
                    offset = cast(int, msg.offset())
                    if offset >= end:
                        return records
                    if offset >= start:
                        records.append(msg)
            raise LogReadError(
                f"could not read offsets {start}..{end - 1} of {topic}[{partition}] within "
                f"{self._timeout:g}s"
            )
        finally:
            consumer.unassign()

    def standing(
        self, ends_of: list[tuple[str, int]], committed_of: list[tuple[str, int]], timeout: float
    ) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
        """The log end of each of `ends_of`, and the group's committed offset of each of
        `committed_of` that has one, as the brokers answer now."""
        consumer = self._client()
        ends: dict[tuple[str, int], int] = {}
        committed: dict[tuple[str, int], int] = {}
        with kafka_call("reading end offsets", timeout):
            for topic, partition in ends_of:
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=timeout, cached=False
                )
                ends[(topic, partition)] = int(high)
            if committed_of:
                asked = [TopicPartition(t, p) for t, p in committed_of]
                for tp in consumer.committed(asked, timeout=timeout):
                    if tp.offset >= 0:
                        committed[(tp.topic, tp.partition)] = int(tp.offset)
        return ends, committed

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
