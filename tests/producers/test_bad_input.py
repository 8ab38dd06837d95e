"""Every refusal has its status and a JSON body naming what was wrong; none writes to Kafka."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from keel.producers.app import build_app
from keel.producers.auth import create_key
from keel.settings import KeelSettings
from tests.producers.conftest import post, serve_in_thread
from tests.producers.test_http_roundtrip import order


@pytest.fixture
def small_limits(ingest_settings: KeelSettings) -> KeelSettings:
    return ingest_settings.model_copy(
        update={
            "ingest_max_body_bytes": 20_000,
            "ingest_max_batch_events": 10,
            "ingest_max_event_bytes": 2_000,
            "ingest_rate_limit": 1.0,
            "ingest_rate_burst": 8,
        }
    )


@pytest.fixture
def url(small_limits: KeelSettings) -> Iterator[str]:
    with serve_in_thread(build_app(small_limits)) as base:
        yield base


@pytest.fixture
def key(small_limits: KeelSettings) -> str:
    assert small_limits.ingest_keys_file is not None
    return create_key(small_limits.ingest_keys_file, "shop")


def test_401_without_or_with_unknown_key(url: str, key: str) -> None:
    for header_key in (None, "keel_00000000_nope"):
        status, _, body = post(url, order(), header_key)
        assert status == 401, body
        assert "key" in body["error"].lower() or "authorization" in body["error"].lower()


def test_403_type_not_allowed_for_key(url: str, small_limits: KeelSettings) -> None:
    assert small_limits.ingest_keys_file is not None
    limited = create_key(small_limits.ingest_keys_file, "marketing", ["page.viewed"])
    status, _, body = post(url, {"events": [order()]}, limited)
    assert status == 403
    assert body["errors"] == [
        {"index": 0, "field": "type", "error": "this API key may not send 'order.placed'"}
    ]


def test_415_wrong_content_type(url: str, key: str) -> None:
    status, _, body = post(url, order(), key, content_type="text/plain")
    assert status == 415
    assert "application/json" in body["error"]


@pytest.mark.parametrize(
    ("raw", "field"),
    [(b"{not json", None), (b"[1, 2]", ""), (b'"x"', ""), (b'{"events": 3}', "events"),
     (b'{"events": []}', "events"), (b'{"events": [], "x": 1}', "x"), (b"\xff\xfe", None)],
)  # fmt: skip
def test_400_bad_json(url: str, key: str, raw: bytes, field: str | None) -> None:
    status, _, body = post(url, None, key, raw=raw)
    assert status == 400, body
    assert body["error"]
    if field is not None:
        assert body["errors"][0]["field"] == field


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_400_body_not_in_its_content_encoding(url: str, key: str, encoding: str) -> None:
    raw = json.dumps(order()).encode()
    status, _, body = post(url, None, key, raw=raw, headers={"Content-Encoding": encoding})
    assert status == 400, body
    assert f"not valid {encoding}" in body["error"]
    assert body["errors"] == [{"field": "Content-Encoding", "error": f"body is not {encoding}"}]


def test_413_body_batch_and_event_size(url: str, key: str) -> None:
    status, _, body = post(
        url, None, key, raw=b'{"type": "track", "pad": "' + b"x" * 30_000 + b'"}'
    )
    assert status == 413 and "20000 bytes" in body["error"]
    status, _, body = post(url, {"events": [order() for _ in range(11)]}, key)
    assert status == 413 and body["errors"] == [{"field": "events", "error": "at most 10 events"}]
    big = order(order_id="x" * 3_000)
    status, _, body = post(url, {"events": [order(), big]}, key)
    assert status == 413 and body["errors"] == [
        {"index": 1, "field": "", "error": "at most 2000 bytes"}
    ]


def test_422_unknown_type_and_invalid_fields(url: str, key: str) -> None:
    status, _, body = post(url, {**order(), "type": "nope.nope"}, key)
    assert status == 422
    assert body["errors"] == [{"field": "type", "error": "unknown event type 'nope.nope'"}]
    bad = order()
    del bad["user_id"]
    status, _, body = post(url, {"events": [bad, {**order(), "items": [{"quantity": "2"}]}]}, key)
    assert status == 422
    fields = {(e["index"], e["field"], e["error"]) for e in body["errors"]}
    assert (0, "user_id", "required") in fields
    assert (1, "items.0.product_id", "required") in fields
    assert (1, "items.0.quantity", "must be an integer") in fields
    assert [r["status"] for r in body["results"]] == ["rejected", "rejected"]


def test_429_with_retry_after(url: str, key: str) -> None:
    status, _, body = post(url, {"events": [order() for _ in range(8)]}, key)
    assert status == 202, body
    status, headers, body = post(url, order(), key)
    assert status == 429
    assert int(headers["Retry-After"]) >= 1
    assert "rate limit" in body["error"]


def test_nothing_refused_reached_kafka(
    url: str, key: str, small_limits: KeelSettings, topic_reader: Callable[..., Any]
) -> None:
    bad = order()
    del bad["total"]
    for body in ({**order(), "type": "nope"}, bad, {"events": [order() for _ in range(11)]}):
        status, _, _ = post(url, body, key)
        assert status in (413, 422)
    status, _, _ = post(url, order(), key, content_type="text/plain")
    assert status == 415
    status, _, _ = post(url, order(), None)
    assert status == 401
    assert topic_reader(idle=1.0) == []
