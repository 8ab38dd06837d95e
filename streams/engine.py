"""The batch engine: one partition's batch of raw messages in, state writes and outputs out.

Pure: state is read through a `StateReader` (Faust tables in a worker, a dict in unit
tests) and every effect is returned in a `BatchResult` for the runtime to carry out in a
safe order: first the outputs (job events, re-keyed deltas, dead letters) are delivered,
then the state is written, then sinks run, then offsets are committed. A crash at any
point therefore replays the batch, and the watermarks in `keel.streams.dedup` skip what was
already applied, so views count every event exactly once.

Why batches: per-event overhead dominates stream processing in Python, so each key is
read once and written once per batch however many of its events the batch holds.

A replayed dead letter of a processor that raised (`keel dlq replay`; its headers name the
processor, see `keel.deadletters.replayed_for`) goes to that processor only, past the dedup
by `event_id`: the others applied the event the first time, and the dedup entry is the
original's. Its new offset is above the processor's watermark, so it is applied once, and a
crash replay of it is skipped like any other. Once the processor has applied it without
raising, a `keel.streams.dedup.replay_key` entry (processor, event_id) in the dedup index skips
any further replay of the event for that processor within the window: the same letter
replayed again (another replay group or tool) arrives at a new offset the watermark cannot
tell apart. A replay that raised again records nothing: its new letter stays replayable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from keel.deadletters import Headers, replayed_for
from keel.streams import dedup
from keel.streams.events import Event
from keel.streams.processor import KeyedView, Output, Processor, Stateful, View, fresh

log = logging.getLogger(__name__)

DEDUP_TABLE = "dedup"

Decoder = Callable[[bytes], Mapping[str, Any]]


class StateReader(Protocol):
    def get(self, table: str, key: str) -> Any:
        """The stored value, or None."""
        ...


def get_many(state: StateReader, table: str, keys: Sequence[str]) -> list[Any]:
    """Stored values of many keys: one call when the reader has `get_many` (a RocksDB
    multi-get for the dedup index), else one `get` a key."""
    many = getattr(state, "get_many", None)
    if many is not None:
        return list(many(table, keys))
    return [state.get(table, key) for key in keys]


@dataclass(slots=True)  # not frozen: built per message, and frozen costs ~1 µs each
class Raw:
    """A message as it came from Kafka (read-only by convention)."""

    value: bytes | None
    partition: int
    offset: int
    timestamp_ms: int = 0
    key: bytes | None = None
    topic: str = ""
    # As the consumer gave them (usually empty); only a replayed dead letter's matter here.
    headers: Headers | None = None


@dataclass(frozen=True, slots=True)
class Poison:
    raw: Raw
    reason: str  # undecodable | processor | unknown_processor
    error: str
    processor: str = ""
    key: str = ""  # the user whose state the processor was updating
    error_class: str = "keel.streams.errors.PoisonMessage"  # the exception's, when one was raised


@dataclass(frozen=True, slots=True)
class Job:
    job_type: str
    record: dict[str, Any]
    key: str
    processor: str


@dataclass
class BatchResult:
    events: list[Event] = field(default_factory=list)  # decoded, not duplicates
    duplicates: int = 0
    poison: list[Poison] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    # processor name -> list of (key, delta message)
    deltas: dict[str, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)
    # (table, key) -> value, each key once
    writes: dict[tuple[str, str], Any] = field(default_factory=dict)
    # view -> key -> rendered value
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)


def user_table(proc: Stateful) -> str:
    """The table holding a processor's per-user state."""
    return f"{proc.name}-users" if isinstance(proc, KeyedView) else proc.name


def has_user_state(proc: Stateful) -> bool:
    return not isinstance(proc, KeyedView) or proc.has_user_state


class Engine:
    """Runs the processors over batches. One instance per worker; holds no state itself."""

    def __init__(
        self,
        processors: Sequence[Processor],
        decode: Decoder,
        dedup_window_ms: int,
        render_views: Collection[str] | None = None,
    ) -> None:
        self.stateful = [p for p in processors if isinstance(p, Stateful)]
        self.keyed = {p.name: p for p in processors if isinstance(p, KeyedView)}
        self.views = {p.name: p for p in processors if isinstance(p, View)}
        self.decode = decode
        self.window_ms = dedup_window_ms
        # Views whose changed values a sink wants (None: all); others are not rendered.
        self.render_views = None if render_views is None else frozenset(render_views)

    # -- stage 1: the source topic, keyed by user ------------------------------------
    def decode_batch(
        self, raws: Sequence[Raw], result: BatchResult, replays: dict[int, str] | None = None
    ) -> list[Event]:
        """The decodable events; `replays` gets offset -> processor of those that are a
        replayed dead letter meant for one processor."""
        events: list[Event] = []
        for raw in raws:
            if raw.value is None:
                result.poison.append(Poison(raw, "undecodable", "empty message (no value)"))
                continue
            try:
                record = self.decode(raw.value)
                event = Event.from_record(
                    record,
                    partition=raw.partition,
                    offset=raw.offset,
                    timestamp_ms=raw.timestamp_ms,
                )
            except Exception as exc:
                result.poison.append(
                    Poison(
                        raw, "undecodable", f"{type(exc).__name__}: {exc}", error_class=_kind(exc)
                    )
                )
                continue
            events.append(event)
            if raw.headers and replays is not None:  # rare: most messages carry none
                target = replayed_for(raw.headers)
                if target is not None:
                    replays[raw.offset] = target
        return events

    def process(self, raws: Sequence[Raw], state: StateReader) -> BatchResult:
        """One partition's messages, in offset order."""
        result = BatchResult()
        by_offset = {raw.offset: raw for raw in raws}
        replays: dict[int, str] = {}
        decoded = self.decode_batch(raws, result, replays)
        if replays:
            self._replays(decoded, replays, state, result, by_offset)
            return result
        events = self._dedup(decoded, state, result)
        result.events = events
        for proc in self.stateful:
            self._run(proc, events, state, result, by_offset)
        return result

    def _replays(
        self,
        decoded: list[Event],
        replays: Mapping[int, str],
        state: StateReader,
        result: BatchResult,
        by_offset: Mapping[int, Raw],
    ) -> None:
        """A batch holding replayed dead letters meant for one processor each: those skip
        the dedup and go to their processor only, in offset order with the batch's other
        events (a processor's keys are read and written once per batch)."""
        names = {proc.name for proc in self.stateful}
        targeted: dict[str, list[Event]] = {}
        others: list[Event] = []
        for ev in decoded:
            name = replays.get(ev.offset)
            if name is None:
                others.append(ev)
            elif name in names:
                targeted.setdefault(name, []).append(ev)
            else:  # the processor was removed (or renamed) since the event failed in it
                log.warning("replayed event %s is for unknown processor %s", ev.event_id, name)
                raw = by_offset.get(ev.offset) or Raw(None, ev.partition, ev.offset)
                error = (
                    f"replayed for processor {name!r}, which this worker does not run "
                    f"(it runs {', '.join(sorted(names)) or 'none'})"
                )
                result.poison.append(Poison(raw, "unknown_processor", error, name))
        # Not in result.events: the sinks saw the event the first time.
        events = result.events = self._dedup(others, state, result)
        applied = self._dedup_replays(targeted, state, result)
        for proc in self.stateful:
            mine = targeted.get(proc.name)
            batch = sorted([*events, *mine], key=_offset) if mine else events
            self._run(proc, batch, state, result, by_offset)
        if applied:
            # Recorded only where the processor did not raise again (its new letter is the
            # one to replay then, and this one must stay replayable too).
            failed = {(p.processor, p.raw.offset) for p in result.poison if p.reason == "processor"}
            for (name, offset), (key, entry) in applied.items():
                if (name, offset) not in failed:
                    result.writes[(DEDUP_TABLE, key)] = entry

    def _dedup_replays(
        self, targeted: dict[str, list[Event]], state: StateReader, result: BatchResult
    ) -> dict[tuple[str, int], tuple[str, list[int]]]:
        """Drop (in place) the replays their processor already applied from another replay
        within the window; the others' dedup entries by (processor, offset), to write once
        the processor has applied them."""
        pending: dict[tuple[str, int], tuple[str, list[int]]] = {}
        for name, evs in targeted.items():
            keys = [dedup.replay_key(name, ev.event_id) for ev in evs]
            batch: dict[str, Any] = {}
            kept: list[Event] = []
            for ev, key, known in zip(evs, keys, get_many(state, DEDUP_TABLE, keys), strict=True):
                entry = batch.get(key, known)
                if dedup.is_duplicate(entry, ev.offset, ev.timestamp_ms, self.window_ms):
                    result.duplicates += 1
                    continue
                if dedup.needs_entry(entry, ev.offset, ev.timestamp_ms, self.window_ms):
                    entry = [ev.offset, ev.timestamp_ms]
                    pending[(name, ev.offset)] = (key, entry)
                batch[key] = entry
                kept.append(ev)
            evs[:] = kept
        return pending

    def _dedup(self, events: list[Event], state: StateReader, result: BatchResult) -> list[Event]:
        kept: list[Event] = []
        batch: dict[str, Any] = {}
        writes = result.writes
        stored = get_many(state, DEDUP_TABLE, [ev.event_id for ev in events])
        for ev, known in zip(events, stored, strict=True):
            entry = batch.get(ev.event_id, known)
            if entry is None:  # most events: an event_id never seen (the rules below, inlined)
                entry = [ev.offset, ev.timestamp_ms]
                writes[(DEDUP_TABLE, ev.event_id)] = batch[ev.event_id] = entry
                kept.append(ev)
                continue
            if dedup.is_duplicate(entry, ev.offset, ev.timestamp_ms, self.window_ms):
                result.duplicates += 1
                continue
            if dedup.needs_entry(entry, ev.offset, ev.timestamp_ms, self.window_ms):
                entry = [ev.offset, ev.timestamp_ms]
                writes[(DEDUP_TABLE, ev.event_id)] = entry
            batch[ev.event_id] = entry
            kept.append(ev)
        return kept

    def _run(
        self,
        proc: Stateful,
        events: Sequence[Event],
        state: StateReader,
        result: BatchResult,
        by_offset: Mapping[int, Raw],
    ) -> None:
        table = user_table(proc)
        keeps_state = has_user_state(proc)
        cache: dict[str, list[Any]] = {}
        dirty: set[str] = set()
        deltas = result.deltas.setdefault(proc.name, []) if isinstance(proc, KeyedView) else None
        wants, step = proc.wants, proc.step
        out = Output()  # one for the batch, emptied after each event that emitted
        for ev in events:
            if not wants(ev.type):
                continue
            key = ev.user_id
            if keeps_state:
                wrapped = cache.get(key)
                if wrapped is None:
                    stored = state.get(table, key)
                    wrapped = list(stored) if stored is not None else [None, fresh(proc.initial())]
                    cache[key] = wrapped
                mark = wrapped[0]
                if mark is not None and (
                    mark[0] >= ev.offset if len(mark) == 1 else not dedup.after(mark, [ev.offset])
                ):
                    continue  # replayed after a crash: already in this state
                try:
                    wrapped[1] = step(wrapped[1], ev, out)
                except Exception as exc:
                    self._poison(result, by_offset, ev, proc, exc)
                    out.jobs.clear()
                    out.deltas.clear()
                    continue
                wrapped[0] = [ev.offset]
                dirty.add(key)
            else:
                try:
                    step(None, ev, out)
                except Exception as exc:
                    self._poison(result, by_offset, ev, proc, exc)
                    out.jobs.clear()
                    out.deltas.clear()
                    continue
            if out.jobs:
                for job_type, record in out.jobs:
                    result.jobs.append(Job(job_type, record, key, proc.name))
                out.jobs.clear()
            if out.deltas:
                if deltas is not None:
                    for seq, (dkey, delta) in enumerate(out.deltas):
                        deltas.append(
                            (dkey, {"p": ev.partition, "o": [ev.offset, seq], "d": delta})
                        )
                out.deltas.clear()
        for key in dirty:
            result.writes[(table, key)] = cache[key]
        if isinstance(proc, View) and dirty and self._renders(proc.name):
            changes = result.changes.setdefault(proc.name, {})
            for key in dirty:
                changes[key] = proc.render(cache[key][1], {})

    @staticmethod
    def _poison(
        result: BatchResult,
        by_offset: Mapping[int, Raw],
        ev: Event,
        proc: Processor,
        exc: Exception,
    ) -> None:
        log.warning(
            "processor %s failed on event %s: %s",
            proc.name,
            ev.event_id,
            exc,
            extra={"event_id": ev.event_id},
        )
        raw = by_offset.get(ev.offset) or Raw(None, ev.partition, ev.offset)
        result.poison.append(
            Poison(
                raw, "processor", f"{type(exc).__name__}: {exc}", proc.name, ev.user_id, _kind(exc)
            )
        )

    # -- stage 2: re-keyed deltas of a KeyedView -------------------------------------
    def fold(
        self, name: str, messages: Sequence[tuple[str, Mapping[str, Any]]], state: StateReader
    ) -> BatchResult:
        """Fold one partition's deltas (key, {"p", "o", "d"}) into the view's aggregates."""
        proc = self.keyed[name]
        result = BatchResult()
        cache: dict[str, dict[str, Any]] = {}
        dirty: set[str] = set()
        for key, msg in messages:
            agg = cache.get(key)
            if agg is None:
                stored = state.get(name, key)
                agg = (
                    {"o": dict(stored["o"]), "v": stored["v"]}
                    if stored is not None
                    else {"o": {}, "v": fresh(proc.initial_aggregate())}
                )
                cache[key] = agg
            source = str(msg["p"])
            if not dedup.after(agg["o"].get(source), msg["o"]):
                continue  # a delta delivered again after its producer's crash
            agg["v"] = proc.fold(agg["v"], msg["d"])
            agg["o"][source] = list(msg["o"])
            dirty.add(key)
        changes = result.changes.setdefault(name, {})
        render = self._renders(name)
        for key in dirty:
            result.writes[(name, key)] = cache[key]
            if render:
                changes[key] = proc.render(cache[key]["v"], {})
        return result

    def _renders(self, view: str) -> bool:
        return self.render_views is None or view in self.render_views


def _offset(ev: Event) -> int:
    return ev.offset


def unwrap_user_state(stored: Any) -> Any:
    """The processor's state inside a stored per-user value ([watermark, state])."""
    return None if stored is None else stored[1]


def unwrap_aggregate(stored: Any) -> Any:
    return None if stored is None else stored["v"]


def _kind(exc: BaseException) -> str:
    """The exception's module-qualified class, as a dead letter's keel.error.class names it."""
    return f"{type(exc).__module__}.{type(exc).__qualname__}"
