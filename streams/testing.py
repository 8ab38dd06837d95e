"""Run processors on plain values, without a broker: the same `Engine` a worker runs, with
a dict for the tables. For processor tests (`keel streams new` writes one)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.engine import (
    BatchResult,
    Engine,
    Job,
    Raw,
    unwrap_aggregate,
    unwrap_user_state,
    user_table,
)
from streams.events import Event
from streams.processor import KeyedView, Processor, Stateful


def event(
    event_type: str,
    *,
    user_id: str = "u1",
    occurred_at: int = 1_764_316_800_000_000,
    event_id: str | None = None,
    **fields: Any,
) -> Event:
    """An event as the codec would produce it (envelope + typed fields)."""
    record = {
        "event_id": event_id or str(uuid.uuid4()),
        "type": event_type,
        "user_id": user_id,
        "occurred_at": occurred_at,
        "received_at": occurred_at,
        "source": "test",
        "context": None,
        **fields,
    }
    return Event.from_record(record)


class DictState:
    def __init__(self) -> None:
        self.tables: dict[str, dict[str, Any]] = {}

    def get(self, table: str, key: str) -> Any:
        return self.tables.get(table, {}).get(key)

    def put_all(self, writes: Mapping[tuple[str, str], Any]) -> None:
        for (table, key), value in writes.items():
            self.tables.setdefault(table, {})[key] = value


@dataclass
class Run:
    processors: dict[str, Processor]
    state: DictState
    jobs: list[Job] = field(default_factory=list)
    results: list[BatchResult] = field(default_factory=list)

    def view(self, name: str, key: str, params: Mapping[str, str] | None = None) -> Any:
        """The rendered value of a view for a key, or None."""
        proc = self.processors[name]
        if isinstance(proc, KeyedView):
            value = unwrap_aggregate(self.state.get(proc.name, key))
        elif isinstance(proc, Stateful):
            value = unwrap_user_state(self.state.get(user_table(proc), key))
        else:
            return None
        return None if value is None else proc.render(value, params or {})


def run(
    processors: Sequence[Processor],
    events: Sequence[Event],
    *,
    batch: int = 100,
    dedup_window_ms: int = 86_400_000,
    state: DictState | None = None,
) -> Run:
    """Feed events (one partition, offsets in order) through the engine in batches."""
    by_id = {ev.event_id: ev for ev in events}
    engine = Engine(processors, lambda data: dict(by_id[data.decode()].data), dedup_window_ms)
    state = state or DictState()
    out = Run({p.name: p for p in processors}, state)
    raws = [Raw(ev.event_id.encode(), 0, i, ev.occurred_at // 1000) for i, ev in enumerate(events)]
    for start in range(0, len(raws), batch):
        result = engine.process(raws[start : start + batch], state)
        state.put_all(result.writes)
        out.jobs.extend(result.jobs)
        out.results.append(result)
        for name, deltas in result.deltas.items():
            folded = engine.fold(name, deltas, state)
            state.put_all(folded.writes)
    return out
