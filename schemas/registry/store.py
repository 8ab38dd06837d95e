"""The registry's state, kept in a compacted single-partition Kafka topic.

Every replica consumes the topic from the beginning and applies records in log order with
the same rules, so all replicas agree: for a (subject, version) and for a schema id, the
first record in the log wins and later conflicting ones are ignored. A write is answered
only once this replica has read it back, so a replica never answers with an id another
replica could contradict (optimistic concurrency on the log; the loser retries)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from keel.kafka import TopicSpec, ensure_topics, make_admin, wait_for_topics
from keel.schemas.errors import SchemaError
from keel.settings import KeelSettings

log = logging.getLogger(__name__)


def schema_hash(text: str) -> str:
    """A short digest of a schema's canonical text, part of every SCHEMA record key."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def schema_key(subject: str, version: int, schema_id: int, text: str) -> dict[str, Any]:
    """The record key of one subject version. It names the schema text as well as the id, so
    two replicas racing for the same (subject, version, id) with different schemas write
    different keys: compaction can never replace the winner's record by the loser's."""
    return {
        "keytype": "SCHEMA", "subject": subject, "version": version, "id": schema_id,
        "hash": schema_hash(text), "magic": 1,
    }  # fmt: skip


@dataclass
class Version:
    schema_id: int
    deleted: bool = False


@dataclass
class State:
    schemas: dict[int, str] = field(default_factory=dict)  # id -> canonical schema text
    ids: dict[str, int] = field(default_factory=dict)  # canonical text -> id
    subjects: dict[str, dict[int, Version]] = field(default_factory=dict)
    config: dict[str | None, str] = field(default_factory=dict)  # None: global level

    def apply(self, key: dict[str, Any], value: dict[str, Any] | None) -> None:
        kind = key.get("keytype")
        if kind == "CONFIG":
            if value is None:
                self.config.pop(key.get("subject"), None)
            else:
                self.config[key.get("subject")] = value["compatibilityLevel"]
        elif kind == "SCHEMA":
            subject, version, schema_id = key["subject"], int(key["version"]), int(key["id"])
            versions = self.subjects.setdefault(subject, {})
            current = versions.get(version)
            if current is not None and (
                current.schema_id != schema_id
                or ("hash" in key and schema_hash(self.schemas[schema_id]) != key["hash"])
            ):
                return  # another replica's write for this version came first
            if value is None:  # permanent delete (or a losing replica withdrawing its write)
                versions.pop(version, None)
                if not versions:
                    self.subjects.pop(subject, None)
                return
            text = value["schema"]
            if self.schemas.get(schema_id, text) != text:
                return  # this id already names another schema
            self.schemas[schema_id] = text
            self.ids.setdefault(text, schema_id)
            versions[version] = Version(schema_id, bool(value.get("deleted", False)))

    def next_id(self) -> int:
        return max(self.schemas, default=0) + 1


class StoreUnavailable(SchemaError):
    """The backing Kafka topic cannot be written or read in time (answered as a 5xx)."""


class KafkaStore:
    def __init__(self, settings: KeelSettings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.state = State()
        self._cond = threading.Condition()
        self._applied = -1  # offset of the last record applied
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Producer | None = None
        self.write_lock = threading.Lock()

    def start(self, timeout: float = 60.0) -> None:
        admin = make_admin(self.settings)
        spec = TopicSpec(self.topic, 1, config={"cleanup.policy": "compact"})
        ensure_topics(admin, [spec], settings=self.settings)
        wait_for_topics(admin, [self.topic])
        self._producer = Producer(
            self.settings.kafka_config(
                **{"acks": "all", "enable.idempotence": True, "linger.ms": 0}
            )
        )
        consumer = Consumer(self.settings.kafka_config(**{
            "group.id": f"keel-registry-{uuid.uuid4().hex}", "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }))  # fmt: skip
        high = self._end_offset(consumer, timeout)
        consumer.assign([TopicPartition(self.topic, 0, 0)])
        self._thread = threading.Thread(
            target=self._consume, args=(consumer,), name="registry-store", daemon=True
        )
        self._thread.start()
        self.wait_applied(high - 1, timeout)
        log.info("registry state loaded from %s: %d schemas", self.topic, len(self.state.schemas))

    def _end_offset(self, consumer: Consumer, timeout: float) -> int:
        """The topic's end offset. On a cluster of several brokers the one the consumer asks
        may not know a topic created a moment ago (wait_for_topics asked another): the fault
        cluster's registry failed to start on 'Unknown partition'. Ask again until it knows."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return int(
                    consumer.get_watermark_offsets(TopicPartition(self.topic, 0), timeout=10)[1]
                )
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() != KafkaError._UNKNOWN_PARTITION or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    @property
    def applied_offset(self) -> int:
        return self._applied

    def ready(self) -> bool:
        """Loaded and still reading the topic."""
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        if self._producer:
            self._producer.flush(10)

    def _consume(self, consumer: Consumer) -> None:
        try:
            while not self._stop.is_set():
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        # Caught up with the end of the log. The last offset need not be a
                        # record this replica receives (compaction removed it, or it is a
                        # transaction marker): everything below the end counts as applied.
                        with self._cond:
                            self._applied = max(self._applied, (msg.offset() or 0) - 1)
                            self._cond.notify_all()
                    else:
                        log.warning("registry store read error: %s", error)
                    continue
                raw_key, raw_value, offset = msg.key(), msg.value(), msg.offset()
                if raw_key is None or offset is None:
                    continue
                try:
                    key = json.loads(raw_key)
                    value = json.loads(raw_value) if raw_value is not None else None
                    with self._cond:
                        self.state.apply(key, value)
                except (ValueError, KeyError, TypeError):
                    log.warning("skipping unreadable registry record at offset %s", offset)
                with self._cond:
                    self._applied = offset
                    self._cond.notify_all()
        finally:
            consumer.close()

    def wait_applied(self, offset: int, timeout: float = 30.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._applied >= offset, timeout):
                raise StoreUnavailable(
                    f"registry store did not catch up with offset {offset} of {self.topic}"
                )

    def write(
        self, key: dict[str, Any], value: dict[str, Any] | None, timeout: float = 30.0
    ) -> None:
        """Produce a record, wait for the broker's ack, then until this replica applied it."""
        assert self._producer is not None, "store not started"
        result: dict[str, Any] = {}
        done = threading.Event()

        def on_delivery(err: KafkaError | None, msg: Any) -> None:
            result["err"], result["offset"] = err, (msg.offset() if msg is not None else None)
            done.set()

        self._producer.produce(
            self.topic, key=json.dumps(key, sort_keys=True).encode(),
            value=None if value is None else json.dumps(value).encode(), on_delivery=on_delivery,
        )  # fmt: skip
        self._producer.flush(timeout)
        if not done.is_set() or result.get("err") is not None:
            raise StoreUnavailable(
                f"could not write to {self.topic}: {result.get('err', 'timed out')}"
            )
        self.wait_applied(int(result["offset"]), timeout)

    @contextlib.contextmanager
    def reading(self) -> Iterator[State]:
        """The state, held still while the block reads it (the store's reader waits meanwhile)."""
        with self._cond:
            yield self.state
