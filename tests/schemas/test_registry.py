"""Keel's registry against the real broker: Confluent interoperability, evolution, bad input,
replicas that agree, and a restart that keeps every id."""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fastavro
import pytest
import requests
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from keel.local.ports import free_base_port
from keel.local.process import ManagedProcess
from keel.schemas.envelope import validate_event
from keel.schemas.errors import DecodeError, RegistryError
from keel.schemas.registry.client import RegistryClient
from keel.schemas.serde import AvroSerde
from keel.schemas.wire import frame

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


def test_confluent_client_drives_the_whole_api(schema_registry: str) -> None:
    """confluent-kafka's SchemaRegistryClient, unmodified, for every call it has that Keel's
    registry serves: register, lookup, versions, compatibility, config, delete."""
    client = SchemaRegistryClient({"url": schema_registry})
    subj = subject()
    s1 = Schema(record_schema("Cf", *V1), "AVRO")
    s2 = Schema(record_schema("Cf", *V1, NOTE), "AVRO")
    incompatible = Schema(record_schema("Cf", {"name": "id", "type": "int"}), "AVRO")

    id1 = client.register_schema(subj, s1)
    id2 = client.register_schema(subj, s2)
    assert id1 != id2 and client.register_schema(subj, s1) == id1
    assert json.loads(client.get_schema(id1).schema_str) == json.loads(s1.schema_str)
    assert subj in client.get_subjects() and client.get_versions(subj) == [1, 2]
    latest = client.get_latest_version(subj)
    assert (latest.version, latest.schema_id) == (2, id2)
    assert client.get_version(subj, 1).schema_id == id1
    assert client.lookup_schema(subj, s2).version == 2
    assert [(v.subject, v.version) for v in client.get_schema_versions(id2)] == [(subj, 2)]
    assert client.get_subjects_by_schema_id(id2) == [subj]
    assert client.test_compatibility(subj, s2) is True
    assert client.test_compatibility(subj, incompatible) is False
    assert client.test_compatibility_all_versions(subj, incompatible) is False
    assert client.get_schema_types() == ["AVRO"]
    assert client.get_referenced_by(subj, 1) == []
    assert client.get_mode(subj) == "READWRITE"

    client.set_compatibility(subj, "FULL")
    assert client.get_compatibility(subj) == "FULL"
    client.delete_config(subj)
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subj, incompatible)
    assert refused.value.http_status_code == 409 and refused.value.error_code == 409

    assert client.delete_version(subj, 1) == 1
    assert client.get_versions(subj) == [2]
    assert client.delete_subject(subj) == [2]
    assert client.delete_subject(subj, permanent=True) == [1, 2]
    assert subj not in client.get_subjects()
    with pytest.raises(SchemaRegistryError) as gone:
        client.get_versions(subj)
    assert gone.value.error_code == 40401


class CountingClient(RegistryClient):
    """Keel's client, counting the HTTP calls it makes."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.calls: list[str] = []

    def _call(self, method: str, path: str, body: object = None) -> object:
        self.calls.append(f"{method} {path}")
        return super()._call(method, path, body)


def test_client_never_fetches_an_id_or_a_schema_twice(schema_registry: str) -> None:
    subj = subject()
    schema = json.loads(record_schema("Cached", *V1))
    schema_id = RegistryClient(schema_registry).register(subj, schema)

    client = CountingClient(schema_registry)
    barrier = threading.Barrier(8)

    def fetch(_n: int) -> tuple[int, int, dict[str, object]]:
        barrier.wait(10)
        return (
            client.register(subj, schema),
            client.lookup(subj, schema),
            client.get_schema(schema_id),
        )

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(fetch, range(8)))
    assert {(r[0], r[1]) for r in results} == {(schema_id, schema_id)}
    assert all(r[2] == schema for r in results)
    # One registration answered the id for lookups too and brought the schema along.
    assert client.calls == [f"POST /subjects/{subj}/versions"]
    assert client.latest(subj)[0] == schema_id and len(client.calls) == 2  # latest moves: asked
    with pytest.raises(RegistryError) as missing:
        client.get_schema(987_654_321)
    assert (missing.value.status, missing.value.error_code) == (404, 40403)


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
    serde = AvroSerde(client)
    old_bytes = frame(old_id, buf.getvalue())
    for _ in range(2):  # the second read takes the cached parsed reader
        assert serde.decode(old_bytes, reader_schema=new) == {"id": "a", "amount": 1, "note": None}
    # An equal reader schema in another dict reads the same; an unresolvable one is refused.
    assert serde.decode(old_bytes, reader_schema=json.loads(json.dumps(new)))["note"] is None
    assert serde.decode(old_bytes) == {"id": "a", "amount": 1}
    with pytest.raises(DecodeError, match="invalid reader schema"):
        serde.decode(old_bytes, reader_schema={"type": "record", "name": "Thing",
                                               "fields": [{"name": "id", "type": "nope"}]})  # fmt: skip
    with pytest.raises(DecodeError, match="undecodable"):
        serde.decode(
            old_bytes,
            reader_schema=json.loads(record_schema("Thing", {"name": "id", "type": "long"})),
        )
    with pytest.raises(DecodeError, match="unknown schema id"):
        AvroSerde(client).decode(frame(999_999, b"\x02a"))
    with pytest.raises(DecodeError, match="undecodable"):
        AvroSerde(client).decode(frame(old_id, b"\xff"))


def test_decode_plain_keeps_uuids_and_timestamps_as_written(schema_registry: str) -> None:
    serde = AvroSerde(RegistryClient(schema_registry))
    _et, record = validate_event(
        {"type": "page.viewed", "user_id": "u-1", "url": "https://x.example/", "path": "/"},
        source="test",
    )
    data = serde.encode("page.viewed", record)
    typed, plain = serde.decode(data), serde.decode_plain(data)
    assert plain["event_id"] == str(typed["event_id"])  # a str, not a UUID
    micros = (typed["occurred_at"] - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert plain["occurred_at"] == micros  # integer microseconds, not a datetime
    assert {
        k: v for k, v in plain.items() if k not in ("event_id", "occurred_at", "received_at")
    } == {k: v for k, v in typed.items() if k not in ("event_id", "occurred_at", "received_at")}
    with pytest.raises(DecodeError, match="undecodable"):
        serde.decode_plain(data[:8])
    with pytest.raises(DecodeError, match="magic byte"):
        serde.decode_plain(b"\x01" + data[1:])


NOTE = {"name": "note", "type": ["null", "string"], "default": None}


def set_level(url: str, subj: str, level: str) -> None:
    response = requests.put(f"{url}/config/{subj}", json={"compatibility": level}, timeout=10)
    assert response.status_code == 200 and response.json() == {"compatibility": level}


def test_evolution_under_backward(schema_registry: str) -> None:
    """The default level: adding an optional field passes; a new required field or a changed
    type is refused with a 409 naming the field, and nothing is stored."""
    subj = subject()
    versions = f"{schema_registry}/subjects/{subj}/versions"
    assert post(versions, {"schema": record_schema("T", *V1)}).status_code == 200
    assert post(versions, {"schema": record_schema("T", *V1, NOTE)}).status_code == 200

    required = post(
        versions, {"schema": record_schema("T", *V1, NOTE, {"name": "extra", "type": "string"})}
    )
    assert required.status_code == 409 and required.json()["error_code"] == 409
    assert "'extra'" in required.json()["message"]
    assert "BACKWARD" in required.json()["message"]

    changed = post(
        versions,
        {"schema": record_schema("T", V1[0], {"name": "amount", "type": "string"}, NOTE)},
    )
    assert changed.status_code == 409 and "field amount" in changed.json()["message"]
    assert requests.get(versions, timeout=10).json() == [1, 2]

    check = post(f"{schema_registry}/compatibility/subjects/{subj}/versions/latest?verbose=true",
                 {"schema": record_schema("T", {"name": "id", "type": "int"})})  # fmt: skip
    assert check.json()["is_compatible"] is False
    assert any("field id" in m for m in check.json()["messages"])
    # Without a version: checked as a registration would be (same verdict, nothing stored).
    as_registration = post(
        f"{schema_registry}/compatibility/subjects/{subj}/versions",
        {"schema": record_schema("T", *V1, NOTE, {"name": "more", "type": "int", "default": 0})},
    )
    assert as_registration.json() == {"is_compatible": True}
    assert requests.get(versions, timeout=10).json() == [1, 2]


def test_removing_a_required_field_is_refused_where_old_readers_need_it(
    schema_registry: str,
) -> None:
    """BACKWARD lets a field go (new readers ignore it); FORWARD and FULL refuse, because
    readers of the existing versions need that field and it has no default."""
    without_amount = record_schema("R", V1[0])
    for level, allowed in (("BACKWARD", True), ("FORWARD", False), ("FULL", False)):
        subj = subject()
        set_level(schema_registry, subj, level)
        versions = f"{schema_registry}/subjects/{subj}/versions"
        assert post(versions, {"schema": record_schema("R", *V1)}).status_code == 200
        removed = post(versions, {"schema": without_amount})
        if allowed:
            assert removed.status_code == 200, removed.text
            continue
        assert removed.status_code == 409, removed.text
        message = removed.json()["message"]
        assert "'amount'" in message and level in message
        assert requests.get(versions, timeout=10).json() == [1]


def test_transitive_levels_check_every_version(schema_registry: str) -> None:
    """v3 reads v2 but not v1: BACKWARD takes it, BACKWARD_TRANSITIVE names the field."""
    v1 = record_schema("V", {"name": "a", "type": "int"})
    v2 = record_schema("V", {"name": "b", "type": ["null", "string"], "default": None})
    v3 = record_schema(
        "V", {"name": "a", "type": "string", "default": ""},
        {"name": "b", "type": ["null", "string"], "default": None},
    )  # fmt: skip
    for level, allowed in (("BACKWARD", True), ("BACKWARD_TRANSITIVE", False)):
        subj = subject()
        set_level(schema_registry, subj, level)
        versions = f"{schema_registry}/subjects/{subj}/versions"
        assert post(versions, {"schema": v1}).status_code == 200
        assert post(versions, {"schema": v2}).status_code == 200
        third = post(versions, {"schema": v3})
        assert (third.status_code == 200) is allowed, third.text
        if not allowed:
            assert "field a" in third.json()["message"]


def test_compatibility_config_subject_and_global(schema_registry: str) -> None:
    subj = subject()
    versions = f"{schema_registry}/subjects/{subj}/versions"
    assert requests.get(f"{schema_registry}/config", timeout=10).json() == {
        "compatibilityLevel": "BACKWARD"
    }
    missing = requests.get(f"{schema_registry}/config/{subj}", timeout=10)
    assert missing.status_code == 404 and missing.json()["error_code"] == 40408
    assert requests.get(
        f"{schema_registry}/config/{subj}?defaultToGlobal=true", timeout=10
    ).json() == {"compatibilityLevel": "BACKWARD"}
    bad = requests.put(
        f"{schema_registry}/config/{subj}", json={"compatibility": "LOOSE"}, timeout=10
    )
    assert bad.status_code == 422 and bad.json()["error_code"] == 42203

    # NONE allows anything; deleting the subject's level falls back to the global BACKWARD.
    set_level(schema_registry, subj, "NONE")
    assert post(versions, {"schema": record_schema("C", *V1)}).status_code == 200
    assert post(versions, {"schema": record_schema("C", {"name": "x", "type": "long"})}).ok
    assert requests.get(f"{schema_registry}/config/{subj}", timeout=10).json() == {
        "compatibilityLevel": "NONE"
    }
    assert requests.delete(f"{schema_registry}/config/{subj}", timeout=10).json() == {
        "compatibilityLevel": "NONE"
    }
    refused = post(versions, {"schema": record_schema("C", {"name": "x", "type": "string"})})
    assert refused.status_code == 409

    # The global level applies to subjects without their own; DELETE /config resets it.
    try:
        put = requests.put(f"{schema_registry}/config", json={"compatibility": "FULL"}, timeout=10)
        assert put.json() == {"compatibility": "FULL"}
        assert requests.get(f"{schema_registry}/config", timeout=10).json() == {
            "compatibilityLevel": "FULL"
        }
    finally:
        requests.delete(f"{schema_registry}/config", timeout=10)
    assert requests.get(f"{schema_registry}/config", timeout=10).json() == {
        "compatibilityLevel": "BACKWARD"
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


def test_delete_one_version_soft_then_permanent(schema_registry: str) -> None:
    subj = subject()
    versions = f"{schema_registry}/subjects/{subj}/versions"
    first_id = post(versions, {"schema": record_schema("V", *V1)}).json()["id"]
    post(versions, {"schema": record_schema("V", *V1, NOTE)})
    early = requests.delete(f"{versions}/1?permanent=true", timeout=10)
    assert early.status_code == 404 and early.json()["error_code"] == 40405
    assert requests.delete(f"{versions}/1", timeout=10).json() == 1
    assert requests.get(versions, timeout=10).json() == [2]
    assert requests.get(f"{versions}?deleted=true", timeout=10).json() == [1, 2]
    again = requests.delete(f"{versions}/1", timeout=10)
    assert again.status_code == 404 and again.json()["error_code"] == 40406
    assert requests.get(f"{versions}/1?deleted=true", timeout=10).json()["id"] == first_id
    assert requests.delete(f"{versions}/1?permanent=true", timeout=10).json() == 1
    assert requests.get(f"{versions}?deleted=true", timeout=10).json() == [2]
    # The id still names its schema (bytes written with it stay readable).
    assert requests.get(f"{schema_registry}/schemas/ids/{first_id}", timeout=10).ok


def test_listing_lookup_and_service_endpoints(schema_registry: str) -> None:
    subj = subject()
    schema = record_schema("L", *V1)
    schema_id = post(f"{schema_registry}/subjects/{subj}/versions", {"schema": schema}).json()["id"]
    found = post(f"{schema_registry}/subjects/{subj}", {"schema": schema}).json()
    assert found["id"] == schema_id and found["version"] == 1 and found["subject"] == subj
    absent = post(f"{schema_registry}/subjects/{subj}", {"schema": record_schema("L", V1[0])})
    assert absent.status_code == 404 and absent.json()["error_code"] == 40403
    no_subject = post(f"{schema_registry}/subjects/nope-{uuid.uuid4().hex}", {"schema": schema})
    assert no_subject.status_code == 404 and no_subject.json()["error_code"] == 40401

    listed = requests.get(f"{schema_registry}/schemas?subjectPrefix={subj}", timeout=10).json()
    assert [(r["subject"], r["version"], r["id"]) for r in listed] == [(subj, 1, schema_id)]
    raw = requests.get(f"{schema_registry}/subjects/{subj}/versions/1/schema", timeout=10).json()
    assert raw == json.loads(schema)
    assert requests.get(
        f"{schema_registry}/schemas/ids/{schema_id}/versions", timeout=10
    ).json() == [{"subject": subj, "version": 1}]
    assert (
        requests.get(
            f"{schema_registry}/subjects/{subj}/versions/1/referencedby", timeout=10
        ).json()
        == []
    )
    assert requests.get(f"{schema_registry}/schemas/types", timeout=10).json() == ["AVRO"]
    assert requests.get(f"{schema_registry}/mode", timeout=10).json() == {"mode": "READWRITE"}

    assert requests.get(f"{schema_registry}/readyz", timeout=10).json()["status"] == "ok"
    metrics = requests.get(f"{schema_registry}/metrics", timeout=10).text
    assert (
        "keel_registry_schemas " in metrics
        and 'keel_registry_responses_total{status="200"}' in metrics
    )
    unknown = requests.get(f"{schema_registry}/no/such/route", timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error_code"] == 404
    protobuf = post(f"{schema_registry}/subjects/{subj}/versions",
                    {"schema": "syntax = 'proto3';", "schemaType": "PROTOBUF"})  # fmt: skip
    assert protobuf.status_code == 422 and protobuf.json()["error_code"] == 42201
    not_a_record = post(f"{schema_registry}/subjects/{subj}/versions", ["a", "list"])
    assert not_a_record.status_code == 400 and not_a_record.json()["error_code"] == 400
    assert requests.get(f"{schema_registry}/subjects/{subj}/versions", timeout=10).json() == [1]


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


def _state(url: str) -> list[dict[str, object]]:
    response = requests.get(f"{url}/schemas", timeout=10)
    assert response.status_code == 200
    return list(response.json())


def test_two_replicas_agree_and_a_restart_keeps_ids(
    registry_pair: tuple[str, str, ManagedProcess, str],
) -> None:
    first, second, second_proc, topic = registry_pair

    # Both replicas take registrations at the same moment: distinct subjects, a subject both
    # extend at once, and one schema under two subjects. Every registration succeeds; the
    # losers of a race retry, so the replicas end up with one and the same state.
    race = f"race-{uuid.uuid4().hex[:6]}"
    assert post(f"{first}/subjects/{race}/versions", {"schema": record_schema("Race", *V1)}).ok
    jobs: list[tuple[str, str, str]] = []
    for n in range(8):
        jobs.append(((first, second)[n % 2], f"pair-{n}", record_schema(f"P{n}", *V1)))
    for n, url in enumerate((first, second)):
        extra = {"name": f"x{n}", "type": ["null", "string"], "default": None}
        jobs.append((url, race, record_schema("Race", *V1, extra)))
    shared = record_schema("Shared", *V1)
    jobs += [(first, "shared-a", shared), (second, "shared-b", shared)]
    barrier = threading.Barrier(len(jobs))

    def register(job: tuple[str, str, str]) -> tuple[str, str, int]:
        url, subj, schema = job
        barrier.wait(30)
        response = post(f"{url}/subjects/{subj}/versions", {"schema": schema})
        assert response.status_code == 200, response.text
        return subj, schema, int(response.json()["id"])

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(register, jobs))
    ids = [schema_id for _subj, schema, schema_id in results if schema != shared]
    assert len(set(ids)) == len(ids), "two different schemas were given one id"
    assert not {r[2] for r in results if r[1] == shared} & set(ids)

    # Every replica reads the log to the same state (poll: the other one may lag a moment).
    deadline = time.monotonic() + 20
    while (a := _state(first)) != (b := _state(second)) or len(a) < len(jobs) + 1:
        assert time.monotonic() < deadline, (a, b)
        time.sleep(0.1)
    assert requests.get(f"{first}/subjects/{race}/versions", timeout=10).json() == [1, 2, 3]
    for subj, schema, schema_id in results:
        looked_up = post(f"{second}/subjects/{subj}", {"schema": schema}).json()
        assert looked_up["id"] == schema_id

    # Restart the second replica from the topic alone: the same state, the same ids.
    before = _state(first)
    port = second.rsplit(":", 1)[1]
    second_proc.stop()
    second_proc.start([sys.executable, "-m", "keel.cli", "registry", "--port", port],
                      env={**os.environ, "KEEL_REGISTRY_TOPIC": topic}, die_with_parent=True)  # fmt: skip
    _wait_healthy(second)
    assert _state(second) == before
    # And ids keep coming from where the log left off.
    fresh = post(f"{second}/subjects/after-restart/versions", {"schema": record_schema("New", *V1)})
    assert fresh.json()["id"] > max(r[2] for r in results)
