"""`active_users` view: distinct users per minute, hour and day (event time).

Per user, the runtime keeps the buckets the user was already counted in (a few recent
ones per granularity); the first event of a user in a bucket sends +1 to that bucket's
counter, re-partitioned by granularity. Users are partitioned by id, so no two workers
ever count the same user. Query `/v1/views/active_users/minute` (or `hour`, `day`) with
`?window=<ISO time>` for one bucket; without it, every bucket still kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keel.streams.events import Event
from keel.streams.processor import KeyedView, Output
from keel.streams.windows import (
    DAY_US,
    HOUR_US,
    MINUTE_US,
    expire,
    iso,
    newest,
    parse_window,
    window_start,
)

GRANULARITIES: dict[str, tuple[int, int]] = {
    # name: (bucket size in µs, buckets kept in the view)
    "minute": (MINUTE_US, 180),
    "hour": (HOUR_US, 72),
    "day": (DAY_US, 35),
}
# Buckets remembered per user: an event later than all of them cannot be counted again.
RECENT_PER_USER = {"minute": 30, "hour": 6, "day": 3}


class ActiveUsers(KeyedView):
    name = "active_users"

    def initial(self) -> dict[str, list[int]]:
        return {g: [] for g in GRANULARITIES}

    def route(self, state: dict[str, list[int]], event: Event, out: Output) -> dict[str, list[int]]:
        for gran, (size, _keep) in GRANULARITIES.items():
            start = window_start(event.occurred_at, size)
            seen = state[gran]
            if start in seen:
                continue
            if len(seen) >= RECENT_PER_USER[gran] and start < seen[0]:
                continue  # older than every bucket remembered: too late to count exactly
            seen.append(start)
            seen.sort()
            del seen[: -RECENT_PER_USER[gran]]
            out.rekey(gran, {"g": gran, "b": start})
        return state

    def initial_aggregate(self) -> dict[str, Any]:
        return {"g": None, "buckets": {}}

    def fold(self, agg: dict[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
        gran, start = str(delta["g"]), int(delta["b"])
        size, keep = GRANULARITIES[gran]
        agg["g"] = gran
        buckets = agg["buckets"]
        top = max(newest(buckets) or start, start)
        if start < window_start(top, size) - (keep - 1) * size:
            return agg  # expired bucket
        buckets[str(start)] = buckets.get(str(start), 0) + 1
        expire(buckets, top, size, keep)
        return agg

    def render(self, agg: dict[str, Any], params: Mapping[str, str]) -> Any:
        gran = agg["g"]
        buckets = agg["buckets"]
        size = GRANULARITIES[gran][0]
        if "window" in params:
            start = parse_window(params["window"], size)
            if str(start) not in buckets:
                raise KeyError(start)
            return {"granularity": gran, "window_start": iso(start), "users": buckets[str(start)]}
        return {
            "granularity": gran,
            "windows": [
                {"window_start": iso(int(s)), "users": buckets[s]} for s in sorted(buckets, key=int)
            ],
        }


processor = ActiveUsers()
