"""Cache fill: `user_activity` and `product_stats` written to Redis, one hash per key with a
TTL, and the profile cache (`<prefix>profile:<user_id>`) invalidated on
`user.profile_updated`.

Keys: `<prefix>view:<view>:<key>` (KEEL_STREAMS_CACHE_PREFIX, default `keel:`). Fields are
the view's top-level fields; nested values are JSON. Writes are idempotent (the current
value, not an increment), so a batch delivered again after a crash does no harm.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from streams.events import Event
from streams.processor import Sink

log = logging.getLogger(__name__)


def hash_fields(value: Any) -> dict[str, str]:
    """A view value as Redis hash fields: strings as they are, everything else as JSON."""
    if not isinstance(value, Mapping):
        return {"value": json.dumps(value, sort_keys=True)}
    return {
        str(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in value.items()
    }


def product_fields(value: Mapping[str, Any]) -> dict[str, str]:
    """product_stats: one field per hourly window (its start), the counts as JSON."""
    return {w["window_start"]: json.dumps(w, sort_keys=True) for w in value.get("windows", [])}


class CacheFill(Sink):
    name = "cache_fill"
    views = ("user_activity", "product_stats")
    types = frozenset({"user.profile_updated"})

    def __init__(self) -> None:
        self.redis: Any = None
        self.prefix = "keel:"
        self.ttl = 86400

    async def start(self, settings: Any) -> None:
        import redis.asyncio as aioredis

        self.prefix = settings.streams_cache_prefix
        self.ttl = settings.streams_cache_ttl_s
        self.redis = aioredis.Redis.from_url(settings.redis_url)

    async def stop(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None

    def view_key(self, view: str, key: str) -> str:
        return f"{self.prefix}view:{view}:{key}"

    def profile_key(self, user_id: str) -> str:
        return f"{self.prefix}profile:{user_id}"

    async def on_changes(self, view: str, changes: Mapping[str, Any]) -> None:
        if self.redis is None or not changes:
            return
        pipe = self.redis.pipeline(transaction=False)
        for key, value in changes.items():
            fields = product_fields(value) if view == "product_stats" else hash_fields(value)
            name = self.view_key(view, key)
            if view == "product_stats":
                pipe.delete(name)  # expired windows go away with the rewrite
            if fields:
                pipe.hset(name, mapping=fields)
                pipe.expire(name, self.ttl)
        await pipe.execute()

    async def on_events(self, events: Sequence[Event]) -> None:
        if self.redis is None:
            return
        stale = {ev.user_id for ev in events if ev.type == "user.profile_updated"}
        if stale:
            await self.redis.delete(*(self.profile_key(u) for u in sorted(stale)))


processor = CacheFill()
