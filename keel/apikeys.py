"""API keys: `keel_<id>_<secret>`, stored as SHA-256 hashes in a JSON file (KEEL_HOME/api-keys.json
or KEEL_INGEST_KEYS_FILE), read by every HTTP surface that takes a key.

Keys are 32 random bytes, so a fast hash is enough (nothing to brute-force); the file never
holds a key itself. Each key names its source (written into every event it sends), its
scopes (`events`: send events to the events API; `views`: read the streams' views API; a key
written before scopes existed has `events`) and, optionally, the event types it may send."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keel.errors import KeelError
from keel.settings import KeelSettings

PREFIX = "keel_"
SCOPES = ("events", "views")


class ApiKeyError(KeelError):
    """The keys file cannot be read, or a key cannot be made or revoked as asked."""


class KeyRefused(KeelError):
    """A request's key: `status` is 401 (missing or unknown key) or 403 (not allowed)."""

    def __init__(self, message: str, *, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    source: str
    types: frozenset[str] | None  # None: every type
    rate: float | None = None  # events/s; None: the settings' default
    scopes: frozenset[str] = frozenset({"events"})


def keys_file(settings: KeelSettings) -> Path:
    return Path(settings.ingest_keys_file or settings.home / "api-keys.json")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _read(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return {"keys": []}
    except (OSError, ValueError) as exc:
        raise ApiKeyError(f"API keys file {path} is unreadable: {exc}") from exc
    return data


def create_key(
    path: Path,
    source: str,
    types: list[str] | None = None,
    rate: float | None = None,
    scopes: list[str] | None = None,
) -> str:
    """Add a key for `source` to the file and return it (the only time it is shown)."""
    scopes = sorted(set(scopes or ["events"]))
    if unknown := [s for s in scopes if s not in SCOPES]:
        raise ApiKeyError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    if not source or not source.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ApiKeyError(f"source {source!r} must be letters, digits, '-', '_' or '.'")
    key_id = secrets.token_hex(4)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    data = _read(path)
    data["keys"].append(
        {
            "id": key_id,
            "source": source,
            "types": sorted(types) if types else None,
            "rate": rate,
            "scopes": scopes,
            "sha256": hash_key(key),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    _write(path, data)
    return key


def revoke_key(path: Path, key_id: str) -> dict[str, Any]:
    """Remove the key `key_id` from the file and return its entry (without the hash). Every
    replica reading the file stops accepting it at its next reload (each second)."""
    data = _read(path)
    kept = [e for e in data["keys"] if e.get("id") != key_id]
    if len(kept) == len(data["keys"]):
        known = ", ".join(e["id"] for e in data["keys"]) or "none"
        raise ApiKeyError(f"no API key with id {key_id!r} in {path} (ids: {known})")
    (gone,) = (e for e in data["keys"] if e.get("id") == key_id)
    _write(path, {**data, "keys": kept})
    return {k: v for k, v in gone.items() if k != "sha256"}


def _write(path: Path, data: dict[str, Any]) -> None:
    """Replace the file at once (readers see the old or the new one, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def list_keys(path: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k != "sha256"} for e in _read(path)["keys"]]


class KeyStore:
    """The keys of one file, looked up by hash; reloaded when the file changes. A key is
    accepted only with `scope` among its scopes."""

    def __init__(self, path: Path, scope: str = "events") -> None:
        self.path = path
        self.scope = scope
        self._mtime: float | None = None
        self._by_hash: dict[str, ApiKey] = {}
        # Authorization header -> its key, so a request costs one dict lookup, not a hash.
        # Only known keys are kept (bounded by the file), and a reload empties it.
        self._by_header: dict[str, ApiKey] = {}

    def _load(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._by_hash, self._by_header, self._mtime = {}, {}, None
            return
        if mtime == self._mtime:
            return
        self._by_header = {}
        entries = _read(self.path)["keys"]
        self._by_hash = {
            e["sha256"]: ApiKey(
                e["id"],
                e["source"],
                frozenset(e["types"]) if e.get("types") else None,
                e.get("rate"),
                frozenset(e.get("scopes") or ["events"]),
            )
            for e in entries
        }
        self._mtime = mtime

    def refresh(self) -> None:
        self._load()

    def authenticate(self, header: str | None) -> ApiKey:
        known = self._by_header.get(header) if header else None
        if known is not None:
            return known
        if not header:
            raise KeyRefused("missing Authorization header (Authorization: Bearer <API key>)")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise KeyRefused("Authorization must be 'Bearer <API key>'")
        digest = hash_key(token.strip())
        found = self._by_hash.get(digest)
        if found is None:
            self._load()  # a key created a moment ago: one stat() tells
            found = self._by_hash.get(digest)
        if found is None:
            raise KeyRefused("unknown API key")
        if self.scope not in found.scopes:
            raise KeyRefused(
                f"API key {found.key_id} has no scope {self.scope!r} (its scopes: "
                f"{', '.join(sorted(found.scopes))})",
                status=403,
            )
        if len(self._by_header) < 4 * len(self._by_hash) + 16:  # spellings of known keys
            self._by_header[header] = found
        return found
