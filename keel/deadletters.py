"""Dead letters: the header contract every Keel dead-letter topic follows, the one writer
of those headers, and reading and replaying any of them.

A dead letter keeps the original key and value bytes; its headers say why it failed and
where it came from. Every writer (job workers, stream processors, the PostgreSQL and webhook
sinks) builds them with `letter_headers`: the reason, the error's message cut by one rule
(`MAX_ERROR_BYTES`), its class always, and the original coordinates; so one `keel dlq` reads
and replays them all. `replay` sends letters back to the topic they came from
(or another), each with a `keel.replayed_from` header (and `keel.replay.processor` when the
letter named the stream processor that failed, so only that one applies it again), and
records how far it got in its own consumer group, so a dead letter is replayed once even if
`replay` runs again.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from keel.errors import KafkaEdgeError, KeelError
from keel.kafka import SILENT_LOG, kafka_call, make_consumer, make_producer
from keel.settings import KeelSettings

# Header names (values are UTF-8 strings).
H_ERROR = "keel.error"  # the error's message, at most MAX_ERROR_BYTES of UTF-8
H_ERROR_CLASS = "keel.error.class"  # the error's type, module-qualified; always set
H_REASON = "keel.dlq.reason"  # why it was given up: permanent, undecodable, processor_error, ...
H_ORIG_TOPIC = "keel.original.topic"
H_ORIG_PARTITION = "keel.original.partition"
H_ORIG_OFFSET = "keel.original.offset"
H_ORIG_TIMESTAMP = "keel.original.timestamp_ms"
H_REPLAYED_FROM = "keel.replayed_from"  # on a replayed message: <dlq topic>/<partition>@<offset>
H_PROCESSOR = "keel.processor"  # on a stream processor's letter: the processor that raised
# On a replayed message whose letter named a processor: the stream worker applies it to that
# processor only (the others applied the event the first time).
H_REPLAY_PROCESSOR = "keel.replay.processor"

Headers = Mapping[str, str | bytes | None] | Iterable[tuple[str, str | bytes | None]]
HeaderList = list[tuple[str, str | bytes | None]]

# One truncation rule for every writer: a stack of errors can be long, a header should not be.
MAX_ERROR_BYTES = 2000


@dataclass(frozen=True)
class Failure:
    """Why a record is given up: the message and the error's module-qualified class. A
    failure that is not an exception (an HTTP answer, a record that is not an event) names
    the Keel error class that stands for it."""

    message: str
    error_class: str

    @classmethod
    def of(cls, error: BaseException) -> Failure:
        kind = type(error)
        return cls(str(error) or kind.__name__, f"{kind.__module__}.{kind.__qualname__}")


@dataclass(frozen=True)
class Origin:
    """Where a dead letter's record was first read (kept across retry-topic hops)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int = -1

    @classmethod
    def of_message(cls, msg: Any) -> Origin:
        """The coordinates of a confluent-kafka message."""
        _kind, timestamp_ms = msg.timestamp()
        return cls(msg.topic() or "", msg.partition() or 0, msg.offset() or 0, timestamp_ms)

    @classmethod
    def of(
        cls, headers: Mapping[str, str], topic: str, partition: int, offset: int, ts_ms: int
    ) -> Origin:
        """The original coordinates from the headers of a retried message, else these."""
        if H_ORIG_TOPIC in headers:
            try:
                return cls(
                    headers[H_ORIG_TOPIC],
                    int(headers.get(H_ORIG_PARTITION, "-1")),
                    int(headers.get(H_ORIG_OFFSET, "-1")),
                    int(headers.get(H_ORIG_TIMESTAMP, "0")),
                )
            except ValueError:
                pass
        return cls(topic, partition, offset, ts_ms)


def truncate_error(text: str) -> str:
    """The message cut to MAX_ERROR_BYTES of UTF-8, never inside a character."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= MAX_ERROR_BYTES:
        return text
    return raw[:MAX_ERROR_BYTES].decode("utf-8", "ignore")


def error_headers(failure: Failure) -> HeaderList:
    """`keel.error` (truncated) and `keel.error.class`: on dead letters and retries alike."""
    return [(H_ERROR, truncate_error(failure.message)), (H_ERROR_CLASS, failure.error_class)]


def origin_headers(origin: Origin) -> HeaderList:
    return [
        (H_ORIG_TOPIC, origin.topic),
        (H_ORIG_PARTITION, str(origin.partition)),
        (H_ORIG_OFFSET, str(origin.offset)),
        (H_ORIG_TIMESTAMP, str(origin.timestamp_ms)),
    ]


def letter_headers(
    reason: str, failure: Failure, origin: Origin, extra: Iterable[tuple[str, str]] = ()
) -> HeaderList:
    """The headers of a dead letter: the reason, the error (message and class) and where the
    record came from, then what this writer adds (a job's attempts, a subscriber, ...)."""
    return [(H_REASON, reason), *error_headers(failure), *origin_headers(origin), *extra]


class NothingToReplayTo(KeelError):
    """A dead letter names no original topic and no target topic was given."""


def header_map(headers: Headers | None) -> dict[str, str]:
    """Kafka headers as a dict of strings (the last value wins for repeated names)."""
    out: dict[str, str] = {}
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for name, value in pairs:
        if value is None:
            out[name] = ""
        elif isinstance(value, bytes):
            out[name] = value.decode("utf-8", "replace")
        else:
            out[name] = value
    return out


def replayed_for(headers: Headers | None) -> str | None:
    """The processor a replayed message is meant for: set only on a replay (it carries
    `H_REPLAYED_FROM`) of a letter that named one; None otherwise."""
    # A scan, not header_map: a stream worker asks this of every message that has headers.
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    replayed, target = False, None
    for name, value in pairs:
        if name == H_REPLAYED_FROM:
            replayed = True
        elif name == H_REPLAY_PROCESSOR:
            target = value
    if not replayed or not target:
        return None
    return target.decode("utf-8", "replace") if isinstance(target, bytes) else target


def replay_headers(letter: DeadLetter) -> list[tuple[str, str | bytes | None]]:
    """The headers `replay` gives a letter's message: where it was replayed from, and the
    processor it is for when the letter named one."""
    headers: list[tuple[str, str | bytes | None]] = [(H_REPLAYED_FROM, letter.address)]
    processor = letter.headers.get(H_PROCESSOR)
    if processor:
        headers.append((H_REPLAY_PROCESSOR, processor))
    return headers


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]

    @property
    def reason(self) -> str:
        return self.headers.get(H_REASON, "")

    @property
    def error(self) -> str:
        return self.headers.get(H_ERROR, "")

    @property
    def original_topic(self) -> str | None:
        return self.headers.get(H_ORIG_TOPIC) or None

    @property
    def origin(self) -> str:
        h = self.headers
        return (
            f"{h.get(H_ORIG_TOPIC, '?')}/{h.get(H_ORIG_PARTITION, '?')}@{h.get(H_ORIG_OFFSET, '?')}"
        )

    @property
    def address(self) -> str:
        return f"{self.topic}/{self.partition}@{self.offset}"

    def to_dict(self) -> dict[str, object]:
        return {
            "partition": self.partition,
            "offset": self.offset,
            "key": (self.key or b"").decode("utf-8", "replace"),
            "reason": self.reason,
            "error": self.error,
            "origin": self.origin,
            "headers": self.headers,
        }

    @classmethod
    def of(cls, msg: object) -> DeadLetter:
        return cls(
            msg.topic() or "",  # type: ignore[attr-defined]
            msg.partition() or 0,  # type: ignore[attr-defined]
            msg.offset() or 0,  # type: ignore[attr-defined]
            msg.key(),  # type: ignore[attr-defined]
            msg.value() or b"",  # type: ignore[attr-defined]
            header_map(msg.headers()),  # type: ignore[attr-defined]
        )


def _drain(consumer: Consumer, topic: str, committed: bool, timeout: float) -> list[DeadLetter]:
    """Everything from the start (or the group's committed offsets) up to the end offsets
    seen when called. Partitions are assigned, not subscribed: no rebalance to wait for."""
    with kafka_call(f"reading dead-letter topic {topic}", timeout):
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        refused = metadata.error if metadata is not None else None
        if refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            raise KafkaEdgeError.from_kafka_error(refused, f"reading dead-letter topic {topic}")
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise KafkaEdgeError(f"dead-letter topic {topic} does not exist")
        partitions = sorted(metadata.partitions)
        marks = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            for p in partitions
        }
        starts = {p: OFFSET_BEGINNING for p in partitions}
        if committed:
            for tp in consumer.committed([TopicPartition(topic, p) for p in partitions], timeout):
                if tp.offset >= 0:
                    starts[tp.partition] = tp.offset
    remaining = {p for p in partitions if marks[p][1] > max(marks[p][0], starts[p], 0)}
    consumer.assign([TopicPartition(topic, p, starts[p]) for p in partitions])
    out: list[DeadLetter] = []
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None or msg.error() is not None:
            continue
        deadline = time.monotonic() + timeout  # progress: keep going
        partition, offset = msg.partition() or 0, msg.offset() or 0
        if offset < marks[partition][1]:
            out.append(DeadLetter.of(msg))
        if offset + 1 >= marks[partition][1]:
            remaining.discard(partition)
    if remaining:
        raise KafkaEdgeError(f"reading {topic}: no progress for {timeout}s")
    return out


def read(settings: KeelSettings, topic: str, timeout: float = 10.0) -> list[DeadLetter]:
    """The dead letters in `topic` now, oldest first per partition (commits nothing)."""
    consumer = make_consumer(f"keel.dlq.reader.{time.monotonic_ns()}", settings, logger=SILENT_LOG)
    try:
        return _drain(consumer, topic, committed=False, timeout=timeout)
    finally:
        consumer.close()


def replay_group(topic: str) -> str:
    """The consumer group that remembers how far `topic` was replayed."""
    return f"keel.dlq.replay.{topic}"


def replay(
    settings: KeelSettings,
    topic: str,
    *,
    to: str | None = None,
    group: str | None = None,
    timeout: float = 10.0,
) -> list[DeadLetter]:
    """Send the letters of `topic` not replayed yet to `to`, or each to its original topic;
    return them. Nothing is sent when a letter has nowhere to go."""
    # Silent: a failure ends as one KafkaEdgeError, not librdkafka's log of every retry.
    consumer = make_consumer(group or replay_group(topic), settings, logger=SILENT_LOG)
    producer = make_producer(settings, logger=SILENT_LOG)
    try:
        letters = _drain(consumer, topic, committed=True, timeout=timeout)
        homeless = [x.address for x in letters if not (to or x.original_topic)]
        if homeless:
            raise NothingToReplayTo(
                f"{len(homeless)} dead letter(s) name no original topic (first {homeless[0]}): "
                "give the target with --to"
            )
        failures: list[str] = []

        def delivered(err: KafkaError | None, _msg: object) -> None:
            if err is not None:
                failures.append(str(err))

        for letter in letters:
            producer.produce(
                to or letter.original_topic or "",
                key=letter.key,
                value=letter.value,
                headers=replay_headers(letter),
                on_delivery=delivered,
            )
        if producer.flush(timeout) or failures:
            raise KafkaEdgeError(f"replaying {topic} failed: {failures[:1]}")
        last: dict[int, int] = {}
        for letter in letters:
            last[letter.partition] = max(last.get(letter.partition, -1), letter.offset)
        if last:  # only after every letter was acknowledged: a failed run replays again
            consumer.commit(
                offsets=[TopicPartition(topic, p, off + 1) for p, off in last.items()],
                asynchronous=False,
            )
        return letters
    finally:
        consumer.close()
