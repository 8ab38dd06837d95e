"""Signing, pure: `Keel-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`,
the scheme Stripe uses (`signature_header`, and `verify` for receivers); the JSON body a
subscriber receives (`event_body`) and the delivery id, the same across retries and
restarts (`delivery_id`)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from keel.connectors.webhooks.errors import SignatureError

SIGNATURE_HEADER = "Keel-Signature"
DEFAULT_TOLERANCE_S = 300  # how old a signed timestamp a receiver should accept
# Delivery ids are UUIDv5 of subscriber and record: the same across retries and restarts.
_DELIVERY_NS = uuid.UUID("5b0d8a53-8a4c-4a43-9d1e-2f4f0b6c2a11")


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of `<timestamp>.<body>` under `secret`."""
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The `Keel-Signature` value: `t=<unix seconds>,v1=<hex>`."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={signature(secret, t, body)}"


def verify(
    secret: str,
    body: bytes,
    header: str,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> int:
    """What a receiver does: check a `Keel-Signature` header against the raw body; return
    its timestamp. Several `v1=` values are accepted (one per secret while rotating).
    The tolerance refuses a replay of an old request; 0 turns that check off."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError(f"timestamp t={value!r} is not an integer") from None
        elif key == "v1":
            candidates.append(value)
    if timestamp is None:
        raise SignatureError("no t=<timestamp> in the signature header")
    if not candidates:
        raise SignatureError("no v1=<signature> in the signature header")
    current = time.time() if now is None else now
    if tolerance_s and abs(current - timestamp) > tolerance_s:
        raise SignatureError(f"timestamp {timestamp} is more than {tolerance_s:g}s from now")
    expected = signature(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError("no v1 signature matches the body under this secret")
    return timestamp


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # exact: money must not become a float
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def event_body(record: Mapping[str, Any]) -> bytes:
    """The JSON body POSTed: the event's fields as decoded (`uuid`s as strings,
    `timestamp-micros` as integer microseconds, decimals as strings, bytes as base64)."""
    return json.dumps(
        record, default=_json_default, separators=(",", ":"), ensure_ascii=False
    ).encode()


def delivery_id(subscriber: str, topic: str, partition: int, offset: int) -> str:
    return str(uuid.uuid5(_DELIVERY_NS, f"{subscriber}/{topic}/{partition}@{offset}"))
