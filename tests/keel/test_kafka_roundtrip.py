"""Proof that confluent-kafka speaks to the Kafka 4 broker with Keel's durable defaults."""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import KafkaError, Message

from keel.kafka import PRODUCER_DEFAULTS, make_consumer, make_producer


def test_idempotent_acks_all_round_trip(new_topic: Callable[..., str], group_id: str) -> None:
    topic = new_topic("roundtrip", partitions=3)
    producer = make_producer()
    delivered: list[Message] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        (errors.append(err) if err else delivered.append(msg))

    sent = {f"user-{i % 7}": [] for i in range(7)}  # type: dict[str, list[bytes]]
    for i in range(300):
        key = f"user-{i % 7}"
        value = f"event-{i}".encode()
        sent[key].append(value)
        producer.produce(topic, key=key.encode(), value=value, on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert not errors
    assert len(delivered) == 300
    assert PRODUCER_DEFAULTS["acks"] == "all" and PRODUCER_DEFAULTS["enable.idempotence"] is True

    consumer = make_consumer(group_id)
    consumer.subscribe([topic])
    received: dict[str, list[bytes]] = {}
    deadline = time.monotonic() + 30
    count = 0
    while count < 300 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        received.setdefault(msg.key().decode(), []).append(msg.value())
        count += 1
    consumer.commit(asynchronous=False)
    consumer.close()
    # Keyed messages keep their order per key (one partition per key).
    assert received == sent
