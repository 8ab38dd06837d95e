"""The events API's keys: the core's API keys (keel.apikeys) with the `events` scope."""

from __future__ import annotations

from keel.apikeys import (
    ApiKey,
    KeyStore,
    create_key,
    hash_key,
    keys_file,
    list_keys,
    revoke_key,
)

__all__ = ["ApiKey", "KeyStore", "create_key", "hash_key", "keys_file", "list_keys", "revoke_key"]
