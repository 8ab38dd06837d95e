"""Keel's registry against the real broker: Confluent interoperability, evolution, bad input,
replicas that agree, and a restart that keeps every id."""

from __future__ import annotations

import io
import json
import os
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import fastavro
import pytest
import requests
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from keel.local.broker import free_base_port
from keel.local.process import ManagedProcess
from schemas.envelope import validate_event
from schemas.errors import DecodeError
from schemas.registry.client import RegistryClient
from schemas.serde import AvroSerde
from schemas.wire import frame

CT = {"Content-Type": "application/vnd.schemaregistry.v1+json"}


def record_schema(name: str, *fields: dict[str, object]) -> str:
    return json.dumps({"type": "record", "name": name, "namespace": "test", "fields": list(fields)})


V1 = ({"name": "id", "type": "string"}, {"name": "amount", "type": "int"})


def subject() -> str:
    return f"test-{uuid.uuid4().hex[:8]}-value"


def post(url: str, body: object, headers: dict[str, str] = CT) -> requests.Response:
    return requests.post(
        url,
        data=body if isinstance(body, str | bytes) else json.dumps(body),
        headers=headers,
        timeout=30,
    )


def test_confluent_clients_read_keel_bytes_and_back(schema_registry: str) -> None:
    serde = AvroSerde(RegistryClient(schema_registry))
    et, record = validate_event(
        {"type": "order.placed", "user_id": "u-9", "order_id": "o-9", "total": "5.00",
         "items": [{"product_id": "p", "quantity": 1, "unit_price": "5.00"}]},
        source="test", context={"ip": "127.0.0.1"},
    )  # fmt: skip
    keel_bytes = serde.encode_with(et, record)
    confluent = SchemaRegistryClient({"url": schema_registry})
    ctx = SerializationContext(et.topic, MessageField.VALUE)
    decoded = AvroDeserializer(confluent)(keel_bytes, ctx)
    assert decoded["order_id"] == "o-9" and str(decoded["total"]) == "5.00"
    assert (
        decoded["context"]["ip"] == "127.0.0.1" and str(decoded["event_id"]) == record["event_id"]
    )

    serializer = AvroSerializer(
        confluent, json.dumps(et.schema),
        conf={"subject.name.strategy": lambda c, name: f"{c.topic}-{name}", "auto.register.schemas": True},
    )  # fmt: skip
    confluent_bytes = serializer(record, ctx)
    assert confluent_bytes[:5] == keel_bytes[:5]  # same subject, same id
    event_type, back = serde.decode_event(confluent_bytes)
    assert event_type == "order.placed" and back["order_id"] == "o-9"
    assert confluent.get_latest_version(et.subject).schema_id == serde.schema_id(et)


def test_decode_with_reader_schema_reads_old_and_new(schema_registry: str) -> None:
    client = RegistryClient(schema_registry)
    subj = subject()
    old = json.loads(record_schema("Thing", *V1))
    new = json.loads(
        record_schema("Thing", *V1, {"name": "note", "type": ["null", "string"], "default": None})
    )
    old_id = client.register(subj, old)
    new_id = client.register(subj, new)
    assert old_id != new_id
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(old), {"id": "a", "amount": 1})
    decoded = AvroSerde(client).decode(frame(old_id, buf.getvalue()), reader_schema=new)
    assert decoded == {"id": "a", "amount": 1, "note": None}
    with pytest.raises(DecodeError, match="unknown schema id"):
        AvroSerde(client).decode(frame(999_999, b"\x02a"))
    with pytest.raises(DecodeError, match="undecodable"):
        AvroSerde(client).decode(frame(old_id, b"\xff"))


def test_evolution_under_backward(schema_registry: str) -> None:
    subj = subject()
    versions = f"{schema_registry}/subjects/{subj}/versions"
    assert post(versions, {"schema": record_schema("T", *V1)}).status_code == 200
    added = record_schema("T", *V1, {"name": "note", "type": ["null", "string"], "default": None})
    assert post(versions, {"schema": added}).status_code == 200
    removed = post(
        versions,
        {
            "schema": record_schema(
                "T",
                V1[0],
                {"name": "note", "type": ["null", "string"], "default": None},
                {"name": "extra", "type": "string"},
            )
        },
    )
    assert removed.status_code == 409 and removed.json()["error_code"] == 409
    assert "extra" in removed.json()["message"]
    changed = post(
        versions,
        {
            "schema": record_schema(
                "T",
                V1[0],
                {"name": "amount", "type": "string"},
                {"name": "note", "type": ["null", "string"], "default": None},
            )
        },
    )
    assert changed.status_code == 409 and "amount" in changed.json()["message"]
    assert requests.get(versions, timeout=10).json() == [1, 2]
    check = post(f"{schema_registry}/compatibility/subjects/{subj}/versions/latest?verbose=true",
                 {"schema": record_schema("T", {"name": "id", "type": "int"})})  # fmt: skip
    assert check.json()["is_compatible"] is False and any(
        "id" in m for m in check.json()["messages"]
    )

    # FORWARD refuses what BACKWARD allows the other way round; NONE allows anything.
    assert (
        requests.put(
            f"{schema_registry}/config/{subj}", json={"compatibility": "NONE"}, timeout=10
        ).status_code
        == 200
    )
    assert (
        post(
            versions, {"schema": record_schema("T", {"name": "other", "type": "long"})}
        ).status_code
        == 200
    )
    assert requests.get(f"{schema_registry}/config/{subj}", timeout=10).json() == {
        "compatibilityLevel": "NONE"
    }


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        ("{not json", CT, 400, 400),
        (
            {
                "schema": '{"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}'
            },
            CT,
            422,
            42201,
        ),
        ({"schema": ""}, CT, 422, 42201),
        ({"schema": "x" * 300_000}, CT, 413, 413),
        ({"schema": record_schema("Y", *V1)}, {"Content-Type": "text/plain"}, 415, 415),
    ],
)
def test_bad_input_gets_confluent_errors_and_stores_nothing(
    schema_registry: str, body: object, headers: dict[str, str], status: int, code: int
) -> None:
    subj = subject()
    response = post(f"{schema_registry}/subjects/{subj}/versions", body, headers)
    assert response.status_code == status, response.text
    assert response.json()["error_code"] == code and response.json()["message"]
    assert subj not in requests.get(f"{schema_registry}/subjects", timeout=10).json()


def test_unknown_subject_version_and_id(schema_registry: str) -> None:
    missing = requests.get(
        f"{schema_registry}/subjects/nope-{uuid.uuid4().hex}/versions/latest", timeout=10
    )
    assert missing.status_code == 404 and missing.json()["error_code"] == 40401
    assert (
        requests.get(f"{schema_registry}/schemas/ids/987654", timeout=10).json()["error_code"]
        == 40403
    )
    subj = subject()
    post(f"{schema_registry}/subjects/{subj}/versions", {"schema": record_schema("Z", *V1)})
    version = requests.get(f"{schema_registry}/subjects/{subj}/versions/7", timeout=10)
    assert version.status_code == 404 and version.json()["error_code"] == 40402
    assert (
        requests.get(f"{schema_registry}/subjects/{subj}/versions/x", timeout=10).json()[
            "error_code"
        ]
        == 42202
    )


def test_soft_then_permanent_delete(schema_registry: str) -> None:
    subj = subject()
    schema_id = post(
        f"{schema_registry}/subjects/{subj}/versions", {"schema": record_schema("D", *V1)}
    ).json()["id"]
    early = requests.delete(f"{schema_registry}/subjects/{subj}?permanent=true", timeout=10)
    assert early.status_code == 404 and early.json()["error_code"] == 40405
    assert requests.delete(f"{schema_registry}/subjects/{subj}", timeout=10).json() == [1]
    assert subj not in requests.get(f"{schema_registry}/subjects", timeout=10).json()
    assert subj in requests.get(f"{schema_registry}/subjects?deleted=true", timeout=10).json()
    assert requests.get(f"{schema_registry}/schemas/ids/{schema_id}", timeout=10).status_code == 200
    assert requests.delete(
        f"{schema_registry}/subjects/{subj}?permanent=true", timeout=10
    ).json() == [1]
    assert subj not in requests.get(f"{schema_registry}/subjects?deleted=true", timeout=10).json()


@pytest.fixture
def registry_pair(
    kafka_bootstrap: str, tmp_path: Path
) -> Iterator[tuple[str, str, ManagedProcess, str]]:
    topic = f"_schemas-pair-{uuid.uuid4().hex[:8]}"
    urls, procs = [], []
    for n in (1, 2):
        port = free_base_port()
        proc = ManagedProcess(f"registry-{n}", tmp_path, tmp_path)
        proc.start([sys.executable, "-m", "keel.cli", "registry", "--port", str(port)],
                   env={**os.environ, "KEEL_REGISTRY_TOPIC": topic}, die_with_parent=True)  # fmt: skip
        urls.append(f"http://127.0.0.1:{port}")
        procs.append(proc)
    for url in urls:
        _wait_healthy(url)
    yield urls[0], urls[1], procs[1], topic
    for proc in procs:
        proc.stop()


def _wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_two_replicas_agree_and_a_restart_keeps_ids(
    registry_pair: tuple[str, str, ManagedProcess, str],
) -> None:
    first, second, second_proc, topic = registry_pair
    ids = {}
    for n in range(6):  # alternate replicas, distinct subjects and schemas
        url = first if n % 2 else second
        subj = f"pair-{n}"
        ids[subj] = post(
            f"{url}/subjects/{subj}/versions", {"schema": record_schema(f"P{n}", *V1)}
        ).json()["id"]
    assert len(set(ids.values())) == 6
    for subj, schema_id in ids.items():
        for url in (first, second):
            deadline = time.monotonic() + 10
            while (
                got := requests.get(f"{url}/subjects/{subj}/versions/latest", timeout=10)
            ).status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert got.json()["id"] == schema_id
    # Restart the second replica from the topic alone: the same ids.
    port = second.rsplit(":", 1)[1]
    second_proc.stop()
    second_proc.start([sys.executable, "-m", "keel.cli", "registry", "--port", port],
                      env={**os.environ, "KEEL_REGISTRY_TOPIC": topic}, die_with_parent=True)  # fmt: skip
    _wait_healthy(second)
    for subj, schema_id in ids.items():
        assert (
            requests.get(f"{second}/subjects/{subj}/versions/latest", timeout=10).json()["id"]
            == schema_id
        )
