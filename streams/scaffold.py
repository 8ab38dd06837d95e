"""`keel streams new NAME`: a processor module and its tests, ready to edit."""

from __future__ import annotations

import re
from pathlib import Path

from keel.streams.errors import ProcessorError

NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

VIEW = '''"""`{name}` view: per user, <what it counts>."""

from __future__ import annotations

from typing import Any

from keel.streams.events import Event
from keel.streams.processor import View


class {cls}(View):
    name = "{name}"
    types = frozenset({{"page.viewed"}})  # the event types it wants; empty: all

    def initial(self) -> dict[str, Any]:
        return {{"count": 0}}

    def apply(self, state: dict[str, Any], event: Event) -> dict[str, Any]:
        state["count"] += 1
        return state


processor = {cls}()
'''

KEYED = '''"""`{name}` view: per <key>, <what it counts> (re-partitioned by that key)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keel.streams.events import Event
from keel.streams.processor import KeyedView, Output


class {cls}(KeyedView):
    name = "{name}"
    types = frozenset({{"product.viewed"}})

    def route(self, state: Any, event: Event, out: Output) -> Any:
        key = event.get("product_id")
        if key:
            out.rekey(str(key), {{"n": 1}})
        return state

    def initial_aggregate(self) -> dict[str, Any]:
        return {{"count": 0}}

    def fold(self, agg: dict[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
        agg["count"] += int(delta["n"])
        return agg


processor = {cls}()
'''

TRIGGER = '''"""`{name}` trigger: emits a job event for <which events>."""

from __future__ import annotations

import json
from typing import Any

from keel.streams.events import Event
from keel.streams.processor import Output, Trigger
from keel.streams.processors.job_triggers import job_id, now_us


class {cls}(Trigger):
    name = "{name}"
    types = frozenset({{"order.placed"}})

    def fire(self, state: Any, event: Event, out: Output) -> Any:
        out.job(
            "job.email",
            {{
                "job_id": job_id(event.event_id, "{name}"),
                "idempotency_key": event.event_id,
                "created_at": now_us(),
                "user_id": event.user_id,
                "template": "order_receipt",
                "to": None,
                "data_json": json.dumps({{"event_id": event.event_id}}),
            }},
        )
        return state


processor = {cls}()
'''

TEST = '''"""Tests of the `{name}` processor without a broker: on the engine alone (`run`) and
through a worker's Faust agents in Faust's test context (`faust_run`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from keel.streams.events import Event
from keel.streams.processors.{name} import processor
from keel.streams.testing import event, faust_run, run


def make_events() -> list[Event]:
    # Complete events of their catalog schema: faust_run encodes them as Avro.
    fields: dict[str, Any] = {fields}
    return [event("{etype}", user_id="u1", **fields) for _ in range(2)]


def test_{name}_counts_on_plain_values() -> None:
    events = make_events()
    result = run([processor], events)
    assert result.view("{name}", "{key}") is not None
    # Sending the same event_id again changes nothing.
    again = run([processor], [*events, events[0]])
    assert again.view("{name}", "{key}") == result.view("{name}", "{key}")


def test_{name}_through_fausts_test_context(tmp_path: Path) -> None:
    events = make_events()
    result = faust_run([processor], [*events, events[0]], tmp_path)
    expected = run([processor], events).view("{name}", "{key}")
    assert result.view("{name}", "{key}") == expected
'''

KINDS = {
    "view": (VIEW, "page.viewed", "u1"),
    "keyed-view": (KEYED, "product.viewed", "p1"),
    "trigger": (TRIGGER, "order.placed", ""),
}
# The fields (beyond the envelope) the generated test gives its events.
FIELDS = {
    "page.viewed": '{"url": "https://shop.example/p", "path": "/p"}',
    "product.viewed": '{"product_id": "p1"}',
    "order.placed": (
        '{\n        "order_id": "o1",\n        "items": [],\n        "total": Decimal("9.90"),\n'
        '        "currency": "EUR",\n    }'
    ),
}

TRIGGER_TEST = '''"""Tests of the `{name}` trigger without a broker: on the engine alone (`run`) and
through a worker's Faust agents in Faust's test context (`faust_run`)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from keel.streams.events import Event
from keel.streams.processors.{name} import processor
from keel.streams.testing import event, faust_run, run


def make_events() -> list[Event]:
    # Complete events of their catalog schema: faust_run encodes them as Avro.
    fields: dict[str, Any] = {fields}
    return [event("{etype}", user_id="u1", **fields)]


def test_{name}_emits_one_job_per_event() -> None:
    events = make_events()
    result = run([processor], [*events, events[0]])  # the duplicate emits nothing
    assert [job.job_type for job in result.jobs] == ["job.email"]
    assert result.jobs[0].record["idempotency_key"] == events[0].data["event_id"]


def test_{name}_emits_avro_job_events_through_fausts_test_context(tmp_path: Path) -> None:
    events = make_events()
    result = faust_run([processor], [*events, events[0]], tmp_path)
    [job] = result.jobs("job.email")  # decoded from the job topic's Avro
    assert job["idempotency_key"] == events[0].data["event_id"]
'''


def scaffold(name: str, kind: str, root: Path) -> list[Path]:
    """Write the module and its test; refuse a bad name, an unknown kind or existing files."""
    if not NAME.match(name):
        raise ProcessorError(
            f"processor name {name!r} must start with a letter and hold only a-z, 0-9 and _"
        )
    if kind not in KINDS:
        raise ProcessorError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    template, etype, key = KINDS[kind]
    module = root / "streams" / "processors" / f"{name}.py"
    test = root / "tests" / "streams" / f"test_processor_{name}.py"
    for path in (module, test):
        if path.exists():
            raise ProcessorError(f"{path} already exists")
    if not module.parent.is_dir():
        raise ProcessorError(f"{module.parent} is not a folder: run this at the project root")
    cls = "".join(part.capitalize() for part in name.split("_"))
    module.write_text(template.format(name=name, cls=cls))
    test.parent.mkdir(parents=True, exist_ok=True)
    test_template = TRIGGER_TEST if kind == "trigger" else TEST
    test.write_text(test_template.format(name=name, etype=etype, key=key, fields=FIELDS[etype]))
    return [module, test]
