"""API keys: `keel_<id>_<secret>`, stored as SHA-256 hashes in a JSON file.

Keys are 32 random bytes, so a fast hash is enough (nothing to brute-force); the file never
holds a key itself. Each key names its source (written into every event it sends) and,
optionally, the event types it may send."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keel.settings import KeelSettings
from producers.errors import AuthError, IngestError

PREFIX = "keel_"


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    source: str
    types: frozenset[str] | None  # None: every type
    rate: float | None = None  # events/s; None: the settings' default

    def may_send(self, event_type: str) -> bool:
        return self.types is None or event_type in self.types


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
        raise IngestError(f"API keys file {path} is unreadable: {exc}") from exc
    return data


def create_key(
    path: Path, source: str, types: list[str] | None = None, rate: float | None = None
) -> str:
    """Add a key for `source` to the file and return it (the only time it is shown)."""
    if not source or not source.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise IngestError(f"source {source!r} must be letters, digits, '-', '_' or '.'")
    key_id = secrets.token_hex(4)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    data = _read(path)
    data["keys"].append(
        {
            "id": key_id,
            "source": source,
            "types": sorted(types) if types else None,
            "rate": rate,
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
        raise IngestError(f"no API key with id {key_id!r} in {path} (ids: {known})")
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
    """The keys of one file, looked up by hash; reloaded when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
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
            raise AuthError("missing Authorization header (Authorization: Bearer <API key>)")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("Authorization must be 'Bearer <API key>'")
        digest = hash_key(token.strip())
        found = self._by_hash.get(digest)
        if found is None:
            self._load()  # a key created a moment ago: one stat() tells
            found = self._by_hash.get(digest)
        if found is None:
            raise AuthError("unknown API key")
        if len(self._by_header) < 4 * len(self._by_hash) + 16:  # spellings of known keys
            self._by_header[header] = found
        return found
