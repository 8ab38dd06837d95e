"""Job triggers: `user.signed_up` → welcome email, `order.placed` → receipt email,
`report.requested` → report job. Each job event carries the originating `event_id` as its
idempotency key and a job id derived from it, so a job emitted again after a crash is the
same job to the job workers.

The user's address comes from `user.signed_up` and `user.profile_updated`, kept per user
(the events topic is keyed by user id, so that state lives beside the user's orders).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from keel.streams.events import Event, to_micros
from keel.streams.processor import Output, Trigger
from keel.streams.processors.user_activity import order_total

JOB_NAMESPACE = uuid.UUID("6f1c1a52-5b0e-4f53-9a56-3c9d7f0c2b11")
ADDRESS_FIELDS = ("email", "to", "address")
PROFILE_FIELDS = ("name", "first_name", "last_name", "locale")


def job_id(event_id: str, what: str) -> str:
    return str(uuid.uuid5(JOB_NAMESPACE, f"{event_id}:{what}"))


def now_us() -> int:
    return time.time_ns() // 1000


def address_of(event: Event) -> str | None:
    for name in ADDRESS_FIELDS:
        value = event.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _micros(value: Any, default: int) -> int:
    if value is None:
        return default
    return to_micros(value)


class JobTriggers(Trigger):
    name = "job_triggers"
    types = frozenset(
        {"user.signed_up", "user.profile_updated", "order.placed", "report.requested"}
    )

    def initial(self) -> dict[str, Any]:
        return {"email": None, "profile": {}}

    def fire(self, state: dict[str, Any], event: Event, out: Output) -> dict[str, Any]:
        address = address_of(event)
        if event.type in ("user.signed_up", "user.profile_updated"):
            if address:
                state["email"] = address
            for name in PROFILE_FIELDS:
                if event.get(name) is not None:
                    state["profile"][name] = event.get(name)
        if event.type == "user.signed_up":
            out.job("job.email", self._email(event, "welcome", state, dict(state["profile"])))
        elif event.type == "order.placed":
            out.job("job.email", self._email(event, "order_receipt", state, self._order(event)))
        elif event.type == "report.requested":
            out.job("job.report", self._report(event, state))
        return state

    def _email(
        self, event: Event, template: str, state: Mapping[str, Any], data: Mapping[str, Any]
    ) -> dict[str, Any]:
        return {
            "job_id": job_id(event.event_id, template),
            "idempotency_key": event.event_id,
            "created_at": now_us(),
            "user_id": event.user_id,
            "template": template,
            "to": state.get("email"),
            "data_json": _json({"user_id": event.user_id, "event_id": event.event_id, **data}),
        }

    @staticmethod
    def _order(event: Event) -> dict[str, Any]:
        data = {
            k: event.get(k)
            for k in event.data
            if k not in ("event_id", "type", "user_id", "received_at", "source", "context")
        }
        total = order_total(event)
        if total is not None:
            data["total"], data["currency"] = str(total[0]), total[1]
        return data

    def _report(self, event: Event, state: Mapping[str, Any]) -> dict[str, Any]:
        end = _micros(event.get("period_end"), event.occurred_at)
        start = _micros(event.get("period_start"), end - 30 * 86_400_000_000)
        return {
            "job_id": job_id(event.event_id, "report"),
            "idempotency_key": event.event_id,
            "created_at": now_us(),
            "user_id": event.user_id,
            "kind": str(event.get("kind") or event.get("report") or "activity"),
            "period_start": start,
            "period_end": end,
            "to": address_of(event) or state.get("email"),
        }


processor = JobTriggers()
