"""The views API asks for an API key of scope `views` (KEEL_VIEWS_REQUIRE_KEY): a stream
worker on the test's own topics refuses a request without one, or with a key of another
scope, answers one with it, and refuses a revoked key at once."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from keel.apikeys import create_key, revoke_key
from tests.polling import wait_for
from tests.streams.conftest import StreamsEnv, Worker


def _view(worker: Worker, path: str, key: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(f"{worker.url}/v1/views/{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_views_api_takes_only_a_views_key(streams_env: StreamsEnv, tmp_path: Path) -> None:
    keys = tmp_path / "api-keys.json"
    views_key = create_key(keys, "reports", scopes=["views"])
    events_key = create_key(keys, "shop")
    worker = streams_env.start_worker(
        KEEL_VIEWS_REQUIRE_KEY="true", KEEL_INGEST_KEYS_FILE=str(keys)
    )
    user = f"u-{uuid.uuid4().hex[:6]}"
    streams_env.send([{"event_id": str(uuid.uuid4()), "type": "page.viewed", "user_id": user,
                       "url": "https://shop.example/", "path": "/"}])  # fmt: skip
    path = f"user_activity/{user}"
    status, body = wait_for(
        lambda: (a := _view(worker, path, views_key))[0] == 200 and a, 60, "the view"
    )
    assert body["counts"] == {"page.viewed": 1}
    status, body = _view(worker, path, None)
    assert status == 401 and "Authorization" in body["error"], body
    status, body = _view(worker, path, events_key)
    assert status == 403 and "has no scope 'views'" in body["error"], body
    assert worker.get("/readyz")[0] == 200  # the probes stay open
    revoke_key(keys, views_key.split("_")[1])
    status, body = _view(worker, path, views_key)
    assert status == 401 and body["error"] == "unknown API key", body
