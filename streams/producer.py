"""A confluent-kafka (librdkafka) producer for the worker's own writes: table changelogs,
re-keyed deltas, job events and dead letters.

Why not Faust's producer (aiokafka): every record through it costs tens of microseconds of
Python (a FutureMessage, the producer buffer, aiokafka's accumulator), and a batch writes
hundreds of records; librdkafka takes a record in about a microsecond. The worker waits
for the broker's acks with `flush()` (in a thread, so the event loop goes on) before it
lets Faust acknowledge the batch's events, so offsets never pass unwritten state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from keel.kafka import make_producer
from keel.settings import KeelSettings
from keel.streams.errors import StreamsError

Headers = Sequence[tuple[str, bytes]]


class DeliveryFailed(StreamsError):
    """The broker did not take a record (after librdkafka's own retries)."""


class BatchProducer:
    def __init__(self, settings: KeelSettings) -> None:
        self.settings = settings
        self._producer: Producer | None = None
        self._errors: list[str] = []
        self._closed = False
        # changelog (topic, partition) -> highest offset written, for Faust's persisted offsets
        self.offsets: dict[tuple[str, int], int] = {}

    @property
    def producer(self) -> Producer:
        if self._closed:
            raise DeliveryFailed("the worker's producer is closed (the worker is stopping)")
        if self._producer is None:  # created on first use: no I/O in the constructor
            self._producer = make_producer(
                self.settings,
                **{
                    "linger.ms": 2,
                    "batch.size": 1_000_000,
                    "queue.buffering.max.messages": 1_000_000,
                    # librdkafka's own lines as JSON log lines, emitted when the client is
                    # polled (not raw on stderr, even after the worker's last error line).
                    "logger": logging.getLogger("librdkafka"),
                },
            )
        return self._producer

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")
            return
        key = (str(msg.topic()), int(msg.partition() or 0))
        offset = msg.offset()
        if offset is not None and offset > self.offsets.get(key, -1):
            self.offsets[key] = offset

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Headers | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": self._on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = list(headers)
        try:
            self.producer.produce(topic, **kwargs)
        except BufferError:
            self.producer.poll(0.1)
            self.producer.produce(topic, **kwargs)

    async def flush(self) -> None:
        """Wait (off the event loop) until every record produced so far is acknowledged."""
        if self._closed and not self._errors:
            return  # closed with everything delivered: nothing can be pending
        producer = self.producer
        producer.poll(0)  # serve delivery reports first: a failed one must not pass unseen
        if len(producer) == 0 and not self._errors:
            return
        await asyncio.get_running_loop().run_in_executor(None, producer.flush)
        if self._errors:
            errors, self._errors = self._errors, []
            raise DeliveryFailed(f"{len(errors)} record(s) not written: {errors[0]}")

    def close(self, timeout: float = 10.0) -> int:
        """Deliver what is pending for up to `timeout` seconds, then drop the rest and let
        librdkafka go: a stopping worker exits in time whatever the brokers do (its threads
        retried a broker that was gone for minutes). Returns how many records were dropped;
        then `flush` fails for good, so no offset is committed past them."""
        self._closed = True
        producer, self._producer = self._producer, None
        if producer is None:
            return 0
        left = producer.flush(timeout)
        if left:
            # Purging fails the pending records at once: a flush blocked in the executor
            # (a commit waiting for acks) returns, and the delivery reports say what was lost.
            producer.purge(in_queue=True, in_flight=True)
            producer.flush(0)
            self._errors.append(f"{left} record(s) dropped when the worker stopped")
        return int(left)
