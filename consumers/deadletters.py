"""Reading and replaying a job type's dead letters.

`read` lists what is in the dead-letter topic now (up to its end offsets when called).
`replay` sends dead letters back to the job's source topic as fresh jobs (their original bytes
and key, a `keel.replayed_from` header naming the dead letter) and records how far it got in
its own consumer group, so a dead letter is replayed once even if `replay` runs again.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from consumers.job import JobTopics
from consumers.retry import (
    H_ATTEMPT,
    H_ERROR,
    H_ORIG_OFFSET,
    H_ORIG_PARTITION,
    H_ORIG_TOPIC,
    H_REASON,
    header_map,
)
from keel.errors import KafkaEdgeError
from keel.kafka import make_consumer, make_producer
from keel.settings import KeelSettings

H_REPLAYED_FROM = "keel.replayed_from"


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    reason: str
    attempts: int
    error: str
    origin: str

    @classmethod
    def of(cls, msg: object) -> DeadLetter:
        headers = header_map(msg.headers())  # type: ignore[attr-defined]
        origin = (
            f"{headers.get(H_ORIG_TOPIC, '?')}/{headers.get(H_ORIG_PARTITION, '?')}"
            f"@{headers.get(H_ORIG_OFFSET, '?')}"
        )
        try:
            attempts = int(headers.get(H_ATTEMPT, "0"))
        except ValueError:
            attempts = 0
        return cls(
            msg.partition(),  # type: ignore[attr-defined]
            msg.offset(),  # type: ignore[attr-defined]
            msg.key(),  # type: ignore[attr-defined]
            msg.value() or b"",  # type: ignore[attr-defined]
            headers.get(H_REASON, ""),
            attempts,
            headers.get(H_ERROR, ""),
            origin,
        )


def _drain(consumer: Consumer, topic: str, committed: bool, timeout: float) -> list[DeadLetter]:
    """Everything from the start (or the group's committed offsets) up to the end offsets
    seen when called. Partitions are assigned, not subscribed: no rebalance to wait for."""
    metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise KafkaEdgeError(f"dead-letter topic {topic} does not exist")
    partitions = sorted(metadata.partitions)
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
        for p in partitions
    }
    starts = {p: OFFSET_BEGINNING for p in partitions}
    if committed:
        for tp in consumer.committed([TopicPartition(topic, p) for p in partitions], timeout):
            if tp.offset >= 0:
                starts[tp.partition] = tp.offset
    begin = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[0]
        for p in partitions
    }
    remaining = {
        p for p in partitions if ends[p] > max(begin[p], starts[p] if starts[p] >= 0 else 0)
    }
    consumer.assign([TopicPartition(topic, p, starts[p]) for p in partitions])
    out: list[DeadLetter] = []
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None or msg.error() is not None:
            continue
        deadline = time.monotonic() + timeout  # progress: keep going
        partition, offset = msg.partition() or 0, msg.offset() or 0
        if offset < ends[partition]:
            out.append(DeadLetter.of(msg))
        if offset + 1 >= ends[partition]:
            remaining.discard(partition)
    if remaining:
        raise KafkaEdgeError(f"reading {topic}: no progress for {timeout}s")
    return out


def read(settings: KeelSettings, topics: JobTopics, timeout: float = 10.0) -> list[DeadLetter]:
    """The dead letters in the topic now, oldest first per partition."""
    consumer = make_consumer(f"keel.jobs.dlq-reader.{uuid.uuid4().hex[:8]}", settings)
    try:
        return _drain(consumer, topics.dlq, committed=False, timeout=timeout)
    finally:
        consumer.close()


def replay(
    settings: KeelSettings, topics: JobTopics, group: str, timeout: float = 10.0
) -> list[DeadLetter]:
    """Send the dead letters not replayed yet back to the source topic; return them."""
    consumer = make_consumer(group, settings)
    producer = make_producer(settings)
    try:
        letters = _drain(consumer, topics.dlq, committed=True, timeout=timeout)
        failures: list[str] = []

        def delivered(err: KafkaError | None, _msg: object) -> None:
            if err is not None:
                failures.append(str(err))

        for letter in letters:
            producer.produce(
                topics.source,
                key=letter.key,
                value=letter.value,
                headers=[(H_REPLAYED_FROM, f"{topics.dlq}/{letter.partition}@{letter.offset}")],
                on_delivery=delivered,
            )
        if producer.flush(timeout) or failures:
            raise KafkaEdgeError(f"replaying to {topics.source} failed: {failures[:1]}")
        last: dict[int, int] = {}
        for letter in letters:
            last[letter.partition] = max(last.get(letter.partition, -1), letter.offset)
        if last:
            consumer.commit(
                offsets=[TopicPartition(topics.dlq, p, off + 1) for p, off in last.items()],
                asynchronous=False,
            )
        return letters
    finally:
        consumer.close()
