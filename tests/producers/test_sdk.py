"""The SDK, sync and asyncio: same validation and errors as the API, results per event, and
events that confluent-kafka's AvroDeserializer reads back intact."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from keel.producers import AsyncKeelProducer, DeliveryResult, KeelProducer
from keel.schemas.errors import ValidationFailed
from keel.settings import KeelSettings
from tests.producers.test_http_roundtrip import order


def test_sync_producer_roundtrip(
    ingest_settings: KeelSettings, topic_reader: Callable[..., Any]
) -> None:
    events = [order(f"u-{i % 3}") for i in range(30)]
    with KeelProducer(source="billing", settings=ingest_settings) as producer:
        futures = [producer.send(e) for e in events[:10]]
        futures += producer.send_many(events[10:20])
        batch = producer.send_batch(events[20:])  # one future for the ten
        results = producer.flush()
    assert len(results) == 30 and all(isinstance(r, DeliveryResult) and r.ok for r in results)
    assert [f.result().event_id for f in futures] == [e["event_id"] for e in events[:20]]
    assert batch.result() == results[20:]
    assert [r.event_id for r in results] == [e["event_id"] for e in events]
    records = topic_reader(expect=30)
    got = {str(v["event_id"]): (p, o, k, v) for p, o, k, v in records}
    for sent, result in zip(events, results, strict=True):
        partition, offset, key, value = got[sent["event_id"]]
        assert (partition, offset) == (result.partition, result.offset)
        assert key == sent["user_id"].encode()
        assert value["source"] == "billing"
        assert value["total"] == Decimal(sent["total"])
        assert [i["product_id"] for i in value["items"]] == ["p-1", "p-2"]


def test_sync_producer_validation_errors_match_api(ingest_settings: KeelSettings) -> None:
    bad = order()
    del bad["user_id"]
    with KeelProducer(source="billing", settings=ingest_settings) as producer:
        with pytest.raises(ValidationFailed) as info:
            producer.send(bad)
        assert info.value.errors == [{"field": "user_id", "error": "required"}]
        with pytest.raises(ValidationFailed) as info:
            producer.send({**order(), "type": "nope"})
        assert info.value.errors == [{"field": "type", "error": "unknown event type 'nope'"}]
        with pytest.raises(ValidationFailed):  # all or nothing: the valid one is not queued
            producer.send_batch([order(), bad])
        assert producer.flush() == []


def test_async_producer_roundtrip(
    ingest_settings: KeelSettings, topic_reader: Callable[..., Any]
) -> None:
    event_ids = [str(uuid.uuid4()) for _ in range(5)]

    async def main() -> list[DeliveryResult]:
        async with AsyncKeelProducer(source="app", settings=ingest_settings) as producer:
            first = await producer.send(
                {"type": "user.signed_up", "user_id": "u-7", "event_id": event_ids[0],
                 "email": "x@example.com"}
            )  # fmt: skip
            rest = await producer.send_many(
                [{"type": "page.viewed", "user_id": "u-7", "event_id": e, "url": "https://a/",
                  "path": "/a"} for e in event_ids[1:]]
            )  # fmt: skip
            with pytest.raises(ValidationFailed):
                await producer.send({"type": "page.viewed", "user_id": "u-7"})
            return [first, *rest]

    results = asyncio.run(main())
    assert [r.event_id for r in results] == event_ids and all(r.ok for r in results)
    records = topic_reader(expect=5)
    assert sorted(str(v["event_id"]) for *_, v in records) == sorted(event_ids)
    assert {v["source"] for *_, v in records} == {"app"}
    offsets = [r.offset for r in results]
    assert offsets == sorted(offsets)  # one user: one partition, in order
