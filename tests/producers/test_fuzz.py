"""Property-based fuzzing of POST /v1/events (hypothesis): bodies built from /openapi.json's
request schema, then mutated (wrong types, missing and unknown fields, junk values, random
content types and raw bytes). No answer is a 5xx, and everything on Kafka afterwards is a
valid event that was answered 2xx."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel.schemas.catalog import load_catalog
from keel.schemas.envelope import validate_event
from tests.producers.conftest import post
from tests.producers.test_http_roundtrip import order

TYPES = [*load_catalog().types(), "nope", ""]
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _fields_of(event_type: str) -> list[str]:
    catalog = load_catalog()
    return catalog.get(event_type).field_names if event_type in catalog else []


@st.composite
def events(draw: st.DrawFn) -> Any:
    base = draw(st.sampled_from([order(), {"type": "page.viewed", "user_id": "u", "url": "x",
                                           "path": "/"}]))  # fmt: skip
    event = dict(base)
    if draw(st.integers(0, 2)) == 0:
        return event  # a valid event now and then, so that some reach Kafka
    if draw(st.booleans()):
        event["type"] = draw(st.sampled_from(TYPES))
    names = list(dict.fromkeys([*event, *_fields_of(event["type"]), "received_at", "source"]))
    for name in draw(st.lists(st.sampled_from(names), max_size=4)):
        action = draw(st.sampled_from(["drop", "junk", "keep"]))
        if action == "drop":
            event.pop(name, None)
        elif action == "junk":
            event[name] = draw(json_values)
    if draw(st.integers(0, 3)) == 0:
        event[draw(st.text(max_size=10))] = draw(json_values)
    if draw(st.integers(0, 20)) == 0:
        return draw(json_values)
    return event


bodies = events() | st.builds(lambda evs: {"events": evs}, st.lists(events(), max_size=6))


def test_openapi_describes_the_request(ingest_url: str) -> None:
    with urllib.request.urlopen(f"{ingest_url}/openapi.json") as response:
        spec = json.loads(response.read())
    post_op = spec["paths"]["/v1/events"]["post"]
    assert {"202", "207", "400", "401", "403", "413", "415", "422", "429", "503"} <= set(
        post_op["responses"]
    )
    schemas = spec["components"]["schemas"]
    assert "user_id" in schemas["EventIn"]["required"]
    assert schemas["EventBatchIn"]["properties"]["events"]["items"] == {
        "$ref": "#/components/schemas/EventIn"
    }


def test_fuzz_no_5xx_and_nothing_invalid_on_kafka(
    ingest_url: str, api_key: str, topic_reader: Callable[..., Any]
) -> None:
    accepted: set[str] = set()
    statuses: dict[int, int] = {}

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        body=bodies,
        content_type=st.sampled_from(["application/json"] * 6 + ["text/plain", "application/xml", ""]),
        raw=st.integers(0, 9).flatmap(lambda n: st.binary(max_size=64) if n == 0 else st.none()),
    )  # fmt: skip
    def run(body: Any, content_type: str, raw: bytes | None) -> None:
        try:
            data = json.dumps(body, allow_nan=True).encode() if raw is None else raw
        except (ValueError, TypeError):
            return
        status, _, answer = post(ingest_url, None, api_key, content_type=content_type, raw=data)
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, (status, answer, data[:300])
        assert isinstance(answer, dict) and answer
        if status == 202 and "event_id" in answer:
            accepted.add(answer["event_id"])
        elif status in (202, 207):
            accepted.update(r["event_id"] for r in answer["results"] if r["status"] == "accepted")
        else:
            assert answer["error"]

    run()
    assert 202 in statuses and 422 in statuses and 400 in statuses, statuses
    records = topic_reader()
    assert {str(v["event_id"]) for *_, v in records} == accepted
    for *_, value in records:  # every record on Kafka is a valid event of its type
        fields = {k: v for k, v in value.items() if k not in ("received_at", "source")}
        fields["event_id"] = str(fields["event_id"])
        validate_event(_jsonable(fields), source=value["source"])


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if type(value).__name__ == "Decimal":
        return str(value)
    return value
