"""The registry's store on the real broker: it loads a log whose end is no record it can
read (a transaction marker, or an offset compaction removed), and reads its own writes."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, Producer, TopicPartition

from keel.schemas.registry.store import KafkaStore, schema_key
from keel.settings import get_settings


def test_store_starts_on_a_log_ending_in_an_unreadable_offset(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic("_schemas-gap", 1, **{"cleanup.policy": "compact"})
    producer = Producer({"bootstrap.servers": kafka_bootstrap,
                         "transactional.id": f"test-{uuid.uuid4().hex}"})  # fmt: skip
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(
        topic,
        key=json.dumps({"keytype": "CONFIG", "subject": None, "magic": 0}).encode(),
        value=json.dumps({"compatibilityLevel": "FULL"}).encode(),
    )
    producer.commit_transaction(30)  # the log's last offset is now the commit marker
    # The coordinator writes the marker after the commit returns: wait until a committed
    # reader sees the end of the log past it.
    probe = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "unused",
                      "isolation.level": "read_committed"})  # fmt: skip
    deadline = time.monotonic() + 30
    while probe.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1] < 2:
        assert time.monotonic() < deadline, "the transaction never became visible"
        time.sleep(0.1)
    probe.close()

    store = KafkaStore(get_settings(), topic)
    store.start(timeout=20)
    try:
        assert store.state.config == {None: "FULL"}
        text = json.dumps({"type": "record", "name": "G", "fields": []})
        store.write(schema_key("s", 1, 1, text),
                    {"subject": "s", "version": 1, "id": 1, "schema": text, "deleted": False})  # fmt: skip
        assert store.state.subjects["s"][1].schema_id == 1  # read back before write returned
        assert store.ready()
    finally:
        store.stop()
    assert not store.ready()
