"""`product_stats` view: per product, hourly tumbling windows of views, cart adds and orders,
with the conversion rate (orders / views) and expiry of old windows.

Events are keyed by user, so the runtime re-partitions the per-product deltas by product
id; windows follow event time (`occurred_at`) and a window older than the retention
(KEEL_STREAMS_WINDOW_RETENTION_H hours behind the newest window of that product) is
dropped, and so are late deltas for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keel.streams.events import Event
from keel.streams.processor import KeyedView, Output
from keel.streams.windows import (
    HOUR_US,
    expire,
    is_expired,
    iso,
    newest,
    parse_window,
    window_start,
)

COUNTERS = ("views", "cart_adds", "orders")
KIND = {"product.viewed": "views", "cart.item_added": "cart_adds"}


def product_ids(event: Event) -> list[str]:
    """The products an event is about (each once, in order)."""
    if event.type == "order.placed":
        seen: dict[str, None] = {}
        for item in event.get("items") or ():
            pid = item.get("product_id") or item.get("sku")
            if pid:
                seen[str(pid)] = None
        return list(seen)
    pid = event.get("product_id") or event.get("sku")
    return [str(pid)] if pid else []


def conversion(counts: Mapping[str, int]) -> float | None:
    views = counts.get("views", 0)
    return round(counts.get("orders", 0) / views, 6) if views else None


class ProductStats(KeyedView):
    name = "product_stats"
    types = frozenset({"product.viewed", "cart.item_added", "order.placed"})
    retention = 48  # hourly windows kept (KEEL_STREAMS_WINDOW_RETENTION_H, see configure)

    def configure(self, settings: Any) -> None:
        self.retention = settings.streams_window_retention_h

    def route(self, state: Any, event: Event, out: Output) -> Any:
        counter = KIND.get(event.type, "orders")
        start = window_start(event.occurred_at, HOUR_US)
        for pid in product_ids(event):
            out.rekey(pid, {"w": start, "c": counter})
        return state

    def initial_aggregate(self) -> dict[str, Any]:
        return {}

    def fold(self, windows: dict[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
        start = int(delta["w"])
        top = max(newest(windows) or start, start)
        if is_expired(start, top, HOUR_US, self.retention):
            return windows  # late: its window has expired
        counts = windows.setdefault(str(start), dict.fromkeys(COUNTERS, 0))
        counts[delta["c"]] = counts.get(delta["c"], 0) + 1
        return expire(windows, top, HOUR_US, self.retention)

    def render(self, windows: dict[str, Any], params: Mapping[str, str]) -> Any:
        def one(start: str) -> dict[str, Any]:
            counts = windows[start]
            return {
                "window_start": iso(int(start)),
                **counts,
                "conversion_rate": conversion(counts),
            }

        if "window" in params:
            start = str(parse_window(params["window"], HOUR_US))
            if start not in windows:
                raise KeyError(start)
            return one(start)
        if not windows:
            raise KeyError("no windows")
        return {"windows": [one(s) for s in sorted(windows, key=int)]}


processor = ProductStats()
