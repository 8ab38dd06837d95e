"""API keys and their scopes (keel.apikeys), on a file (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keel.apikeys import ApiKeyError, KeyRefused, KeyStore, create_key, revoke_key


def test_a_key_is_accepted_only_for_its_scopes(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    events = create_key(path, "shop")
    views = create_key(path, "reports", scopes=["views"])
    both = create_key(path, "ops", scopes=["views", "events"])
    for_events, for_views = KeyStore(path), KeyStore(path, scope="views")
    assert for_events.authenticate(f"Bearer {events}").source == "shop"
    assert for_views.authenticate(f"Bearer {views}").source == "reports"
    for store in (for_events, for_views):
        assert store.authenticate(f"Bearer {both}").source == "ops"
    with pytest.raises(KeyRefused, match="has no scope 'views'") as refused:
        for_views.authenticate(f"Bearer {events}")
    assert refused.value.status == 403
    with pytest.raises(KeyRefused, match="has no scope 'events'"):
        for_events.authenticate(f"Bearer {views}")


def test_a_key_written_before_scopes_sends_events(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key = create_key(path, "old")
    data = json.loads(path.read_text())
    del data["keys"][0]["scopes"]
    path.write_text(json.dumps(data))
    assert KeyStore(path).authenticate(f"Bearer {key}").source == "old"
    with pytest.raises(KeyRefused):
        KeyStore(path, scope="views").authenticate(f"Bearer {key}")


def test_a_revoked_key_is_refused_at_the_next_refresh(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key = create_key(path, "reports", scopes=["views"])
    store = KeyStore(path, scope="views")
    assert store.authenticate(f"Bearer {key}").source == "reports"
    revoke_key(path, key.split("_")[1])
    store.refresh()
    with pytest.raises(KeyRefused, match="unknown API key"):
        store.authenticate(f"Bearer {key}")


def test_an_unknown_scope_is_named(tmp_path: Path) -> None:
    with pytest.raises(ApiKeyError, match="unknown scope"):
        create_key(tmp_path / "keys.json", "x", scopes=["admin"])
