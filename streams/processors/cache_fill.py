"""Cache fill: `user_activity` and `product_stats` written to Redis, one hash per key with a
TTL, and the profile cache (`<prefix>profile:<user_id>`) invalidated on
`user.profile_updated`.

Keys: `<prefix>view:<view>:<key>` (KEEL_STREAMS_CACHE_PREFIX, default `keel:`). Fields are
the view's top-level fields; nested values are JSON. Writes are idempotent (the current
value, not an increment), so a batch delivered again after a crash does no harm.

While Redis does not answer (restarted, unreachable) the latest value of each changed key is
kept and written again every second until Redis takes it, so a key that changed only during
the outage is not left stale until its next change (found by the fault suite's Redis
restart). At most PENDING_MAX keys are kept; past that the oldest wait for their next
change. A worker that dies with keys pending leaves them to their next change or the TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from keel.streams.events import Event
from keel.streams.processor import Sink

log = logging.getLogger(__name__)
PENDING_MAX = 100_000  # keys whose latest value Redis has not taken yet
RETRY_INTERVAL_S = 1.0


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
        # Redis key -> (view, fields): the latest value of each key not written yet.
        self.pending: dict[str, tuple[str, dict[str, str]]] = {}
        self._retry: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def enabled(self, settings: Any) -> bool:
        return bool(settings.streams_cache_enabled)

    async def start(self, settings: Any) -> None:
        import redis.asyncio as aioredis

        self.prefix = settings.streams_cache_prefix
        self.ttl = settings.streams_cache_ttl_s
        # Bounded waits: a Redis that stops answering must not hold the batch up for ever.
        self.redis = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=5
        )
        self._retry = asyncio.get_running_loop().create_task(self._retry_pending())

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
            self._retry = None
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None

    def view_key(self, view: str, key: str) -> str:
        return f"{self.prefix}view:{view}:{key}"

    def profile_key(self, user_id: str) -> str:
        return f"{self.prefix}profile:{user_id}"

    async def on_changes(self, view: str, changes: Mapping[str, Any]) -> None:
        """Write the changed keys (and any still pending); on a failure they stay pending
        and the error goes up (the worker counts it as a sink error)."""
        if self.redis is None or not changes:
            return
        for key, value in changes.items():
            fields = product_fields(value) if view == "product_stats" else hash_fields(value)
            name = self.view_key(view, key)
            self.pending.pop(name, None)  # re-inserted: the newest is the last to go
            self.pending[name] = (view, fields)
        while len(self.pending) > PENDING_MAX:
            del self.pending[next(iter(self.pending))]
        await self._write_pending()

    async def _write_pending(self) -> None:
        async with self._lock:  # one write at a time: an older value never lands last
            if self.redis is None or not self.pending:
                return
            batch = dict(self.pending)
            pipe = self.redis.pipeline(transaction=False)
            for name, (view, fields) in batch.items():
                if view == "product_stats":
                    pipe.delete(name)  # expired windows go away with the rewrite
                if fields:
                    pipe.hset(name, mapping=fields)
                    pipe.expire(name, self.ttl)
            await pipe.execute()
            for name, entry in batch.items():
                if self.pending.get(name) is entry:  # not changed again meanwhile
                    del self.pending[name]

    async def _retry_pending(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(RETRY_INTERVAL_S)
            if not self.pending:
                continue
            count = len(self.pending)
            try:
                await self._write_pending()
            except Exception as exc:
                if not failing:
                    log.warning("cache: %d keys wait for Redis: %s", count, exc)
                failing = True
                continue
            if failing:
                log.info("cache: Redis answers again; %d pending keys written", count)
            failing = False

    async def on_events(self, events: Sequence[Event]) -> None:
        if self.redis is None:
            return
        stale = {ev.user_id for ev in events if ev.type == "user.profile_updated"}
        if stale:
            await self.redis.delete(*(self.profile_key(u) for u in sorted(stale)))


processor = CacheFill()
