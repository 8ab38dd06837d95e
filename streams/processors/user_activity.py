"""`user_activity` view: per user, counts per event type, first and last seen, orders and
lifetime value (per currency, exact decimals)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from keel.streams.events import Event
from keel.streams.processor import View
from keel.streams.windows import iso


def order_total(event: Event) -> tuple[Decimal, str] | None:
    """(amount, currency) of an `order.placed` event, or None when it has no total."""
    total = event.get("total")
    if total is None:
        return None
    if isinstance(total, Mapping):  # {"amount": ..., "currency": ...}
        return Decimal(str(total.get("amount", "0"))), str(total.get("currency") or "")
    return Decimal(str(total)), str(event.get("currency") or "")


class UserActivity(View):
    name = "user_activity"

    def initial(self) -> dict[str, Any]:
        return {
            "counts": {},
            "events": 0,
            "first_seen": None,
            "last_seen": None,
            "orders": 0,
            "lifetime_value": {},
        }

    def apply(self, state: dict[str, Any], event: Event) -> dict[str, Any]:
        counts = state["counts"]
        counts[event.type] = counts.get(event.type, 0) + 1
        state["events"] += 1
        at = event.occurred_at
        if state["first_seen"] is None or at < state["first_seen"]:
            state["first_seen"] = at
        if state["last_seen"] is None or at > state["last_seen"]:
            state["last_seen"] = at
        if event.type == "order.placed":
            state["orders"] += 1
            total = order_total(event)
            if total is not None:
                amount, currency = total
                ltv = state["lifetime_value"]
                ltv[currency] = str(Decimal(ltv.get(currency, "0")) + amount)
        return state

    def render(self, state: dict[str, Any], params: Mapping[str, str]) -> dict[str, Any]:
        return {
            **state,
            "first_seen": iso(state["first_seen"]) if state["first_seen"] is not None else None,
            "last_seen": iso(state["last_seen"]) if state["last_seen"] is not None else None,
        }


processor = UserActivity()
