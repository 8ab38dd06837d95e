"""The processor API: what a team writes to add a view, a job trigger or a cache filler.

Pure: no Kafka, no Faust. A processor is plain Python over plain values; the runtime
(`keel.streams.app` with `keel.streams.engine`) feeds it batches, keeps its state in Faust
tables backed by RocksDB and changelog topics, makes its updates idempotent and delivers
what it emits.

Kinds:
- `View`: state per user (the source's partition key, so no re-partitioning); queryable
  by user id. Write `initial()` and `apply(state, event)`.
- `KeyedView`: state per some other key (a product, a minute). `route(state, event, out)`
  sees each event with optional per-user state and calls `out.rekey(key, delta)`; the
  runtime re-partitions the deltas by key through an internal topic and folds them with
  `fold(aggregate, delta)`. Queryable by that key.
- `Trigger`: per-user state plus `out.job(job_type, record)` to emit Avro job events.
- `Sink`: side effects on the changes of views (e.g. Redis) and on events.

Every kind may declare `types`: the event types it wants (empty: all of them), and answer
`configure(settings)` (what it reads of the worker's settings); a `Sink` answers
`enabled(settings)` (whether a worker runs it). Both have defaults: the worker asks every
processor the same questions and never names one.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from keel.streams.events import Event


@dataclass
class Output:
    """What one processor emitted while handling one event."""

    jobs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    deltas: list[tuple[str, Any]] = field(default_factory=list)

    def job(self, job_type: str, record: Mapping[str, Any]) -> None:
        """Emit a job event (`job.email`, `job.report`), encoded with its catalog schema."""
        self.jobs.append((job_type, dict(record)))

    def rekey(self, key: str, delta: Any) -> None:
        """Send a JSON-serialisable delta to the keyed stage, partitioned by `key`."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"rekey needs a non-empty string key, got {key!r}")
        self.deltas.append((key, delta))


class Processor:
    """Common part of every kind: a unique `name` and the event `types` it wants."""

    name: ClassVar[str] = ""
    types: ClassVar[frozenset[str]] = frozenset()
    queryable: ClassVar[bool] = False

    def wants(self, event_type: str) -> bool:
        return not self.types or event_type in self.types

    def configure(self, settings: Any) -> None:
        """Take what this processor reads of the worker's settings (a `KeelSettings`), once,
        before the worker starts (default: nothing)."""

    def render(self, state: Any, params: Mapping[str, str]) -> Any:
        """The JSON answer of a query for one key (default: the state as it is)."""
        return state


class Stateful(Processor):
    """A processor with per-user state (`View`, `Trigger`, the user stage of `KeyedView`)."""

    def initial(self) -> Any:
        return None

    def step(self, state: Any, event: Event, out: Output) -> Any:
        """Handle one event; return the new state. Called only for wanted types."""
        raise NotImplementedError


class View(Stateful):
    """A materialized view keyed by user id."""

    queryable = True

    def apply(self, state: Any, event: Event) -> Any:
        raise NotImplementedError

    def step(self, state: Any, event: Event, out: Output) -> Any:
        return self.apply(state, event)


class Trigger(Stateful):
    """Emits job events from events, optionally with per-user state."""

    def step(self, state: Any, event: Event, out: Output) -> Any:
        return self.fire(state, event, out)

    def fire(self, state: Any, event: Event, out: Output) -> Any:
        raise NotImplementedError


class KeyedView(Stateful):
    """A materialized view keyed by something other than the user."""

    queryable = True

    def step(self, state: Any, event: Event, out: Output) -> Any:
        return self.route(state, event, out)

    def route(self, state: Any, event: Event, out: Output) -> Any:
        raise NotImplementedError

    def initial_aggregate(self) -> Any:
        return None

    def fold(self, aggregate: Any, delta: Any) -> Any:
        raise NotImplementedError

    @property
    def has_user_state(self) -> bool:
        """True when `route` keeps per-user state (it overrides `initial`)."""
        return type(self).initial is not Stateful.initial


class Sink(Processor):
    """Side effects after state is written: `views` names the views whose changes it gets.

    `on_changes(view, {key: rendered value})` runs once per batch per view with each changed
    key once; `on_events(events)` gets the batch's events (deduplicated). Both must be
    idempotent: after a crash a batch can be delivered again.
    """

    views: ClassVar[Sequence[str]] = ()

    def enabled(self, settings: Any) -> bool:
        """Whether a worker with these settings runs this sink (default: always)."""
        return True

    async def start(self, settings: Any) -> None:
        """Open connections (called once the worker starts)."""

    async def stop(self) -> None:
        """Close connections."""

    async def on_changes(self, view: str, changes: Mapping[str, Any]) -> None:
        """Changed keys of one view with their rendered values."""

    async def on_events(self, events: Sequence[Event]) -> None:
        """The batch's events, after dedup."""


def fresh(value: Any) -> Any:
    """A deep copy of an initial value, so processors may mutate state in place."""
    return copy.deepcopy(value)


def unique_names(processors: Iterable[Processor]) -> dict[str, Processor]:
    from keel.streams.errors import ProcessorError

    by_name: dict[str, Processor] = {}
    for proc in processors:
        if not proc.name or not proc.name.replace("_", "").isalnum():
            raise ProcessorError(
                f"processor {type(proc).__name__} needs a name of letters, digits and _"
            )
        if proc.name in by_name:
            raise ProcessorError(f"two processors are named {proc.name!r}")
        by_name[proc.name] = proc
    return by_name
