"""Avro encode/decode cost per event: Keel's serde (Confluent wire format, cached ids and
parsed schemas) against bare fastavro on the same record and against confluent-kafka's own
AvroSerializer / AvroDeserializer, in one invocation against one registry.

Needs a running registry (`keel up`, or `keel broker up` + `keel registry`), or pass
--registry URL.

    .venv/bin/python -m bench.serde [--quick] [--runs 7] [--events 20000]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import fastavro
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from bench.common import emit, machine, summary
from keel.schemas.envelope import validate_event
from keel.schemas.registry.client import RegistryClient
from keel.schemas.serde import AvroSerde
from keel.settings import get_settings

ORDER = {
    "type": "order.placed", "user_id": "user-42", "order_id": "order-1001", "total": "59.97", "currency": "EUR",
    "items": [{"product_id": f"sku-{i}", "quantity": 1, "unit_price": "19.99"} for i in range(3)],
    "context": {"ip": "203.0.113.9", "user_agent": "Mozilla/5.0", "session_id": "s-1"},
}  # fmt: skip


def per_event_us(fn: Callable[[], Any], events: int) -> float:
    start = time.perf_counter()
    for _ in range(events):
        fn()
    return (time.perf_counter() - start) / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="5 runs of 5,000 events")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument(
        "--registry", default=None, help="registry URL [default: KEEL_SCHEMA_REGISTRY_URL]"
    )
    args = parser.parse_args()
    runs, events = (5, 5_000) if args.quick else (args.runs, args.events)
    url = args.registry or get_settings().schema_registry_url

    serde = AvroSerde(RegistryClient(url))
    et, record = validate_event(ORDER, source="bench")
    parsed = et.parsed
    keel_bytes = serde.encode_with(et, record)  # registers once; later calls hit the cache
    payload = keel_bytes[5:]

    def bare_encode() -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, record)
        return buf.getvalue()

    def bare_decode() -> Any:
        return fastavro.schemaless_reader(io.BytesIO(payload), parsed, None)

    # A consumer reading with a newer version of the schema (one optional field added).
    newer = {**et.schema, "fields": [*et.schema["fields"],
             {"name": "coupon", "type": ["null", "string"], "default": None}]}  # fmt: skip
    newer_parsed = fastavro.parse_schema(newer)

    def bare_resolve() -> Any:
        return fastavro.schemaless_reader(io.BytesIO(payload), parsed, newer_parsed)

    confluent = SchemaRegistryClient({"url": url})
    ctx = SerializationContext(et.topic, MessageField.VALUE)
    serializer = AvroSerializer(confluent, json.dumps(et.schema),
                                conf={"subject.name.strategy": lambda c, n: f"{c.topic}-{n}"})  # fmt: skip
    deserializer = AvroDeserializer(confluent)
    assert serializer(record, ctx)[:5] == keel_bytes[:5]

    cases: dict[str, Callable[[], Any]] = {
        "encode_fastavro": bare_encode,
        "encode_keel": lambda: serde.encode_with(et, record),
        "encode_confluent": lambda: serializer(record, ctx),
        "decode_fastavro": bare_decode,
        "decode_keel": lambda: serde.decode(keel_bytes),
        "decode_confluent": lambda: deserializer(keel_bytes, ctx),
        "resolve_fastavro": bare_resolve,
        "resolve_keel": lambda: serde.decode(keel_bytes, reader_schema=newer),
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():  # warm caches and code paths
        per_event_us(fn, 500)
    for run in range(runs):
        for name, fn in cases.items():
            results[name].append(per_event_us(fn, events))
        print(
            f"run {run + 1}/{runs}: " + "  ".join(f"{n}={v[-1]:.2f}us" for n, v in results.items()),
            file=sys.stderr,
        )

    def ratios(a: str, b: str) -> dict[str, float]:
        return summary([x / y for x, y in zip(results[a], results[b], strict=True)])

    emit({
        "benchmark": "serde",
        "machine": machine(),
        "events_per_run": events,
        "record": "order.placed with 3 items and context",
        "bytes_per_event": len(keel_bytes),
        **{f"{name}_us": summary(values) for name, values in results.items()},
        "encode_keel_vs_fastavro": ratios("encode_keel", "encode_fastavro"),
        "decode_keel_vs_fastavro": ratios("decode_keel", "decode_fastavro"),
        "resolve_keel_vs_fastavro": ratios("resolve_keel", "resolve_fastavro"),
        "encode_keel_vs_confluent": ratios("encode_keel", "encode_confluent"),
        "decode_keel_vs_confluent": ratios("decode_keel", "decode_confluent"),
    })  # fmt: skip


if __name__ == "__main__":
    main()
