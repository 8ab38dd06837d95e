"""Everything Keel takes from faust-streaming past its public API, in one module.

A faust-streaming release may change any of it without notice, so each piece is named
here and checked by tests/streams/test_faust_adapter.py against the installed version
(`FAUST_TESTED` is the range pyproject pins; those tests fail on the day an upgrade changes
what this module relies on).

The main piece is the batch delivery path. Faust hands a stream one event at a time:
consumer thread → `Consumer._drain_messages` (an asyncio task pair per message, through
`wait_first`) → conductor → channel queue → stream → `take_events` buffer, ~50 µs of CPU
an event before a processor sees it (profiled, bench/RESULTS.md). `BatchConsumer` keeps
Faust's consumer (its thread, group membership, assignment, pauses, rebalances, recovery of
tables and standbys through the per-message path) and changes one thing: the records one
fetch brought for an assigned partition of a topic with a run handler go to that handler
whole, in one call, with no per-event asyncio hand-off. After the handler returns, every
offset of the run it applied (`guard`) is acked into Faust's own offset bookkeeping, and
the runs it read from the log are marked done (`mark_done`), so Faust's commit (which
flushes the producer first, see `keel.streams.app`) commits them as it would a stream's acks;
while a run is being handled it counts as an unacked message, so a rebalance waits for it
(`Consumer.wait_empty`) as for a stream's event in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, cast

import faust
from faust.streams import _current_event
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

FAUST_TESTED = ">=0.15.3,<0.16"

# One fetched run of a partition: aiokafka's ConsumerRecords (topic, partition, offset,
# timestamp in ms, key, value, headers), in offset order.
RunHandler = Callable[[TP, Sequence[Any]], Awaitable[None]]


class _RunInFlight:
    """Stands for a run being handled among Faust's unacked messages (a WeakSet), so a
    rebalance's `wait_empty` waits for it; the attributes are what Faust reads of one."""

    __slots__ = ("__weakref__", "acked", "refcount", "tp")

    def __init__(self, tp: TP) -> None:
        self.tp = tp
        self.acked = False
        self.refcount = 1


def _every_offset(tp: TP, offset: int) -> bool:
    return True


class BatchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with whole fetched runs handed to `run_handlers`, and, for
    the topics it is told to `guard`, acks and gaps that count only what was applied."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guarded: frozenset[str] = frozenset()
        self._is_applied: Callable[[TP, int], bool] = _every_offset

    def guard(self, topics: Iterable[str], is_applied: Callable[[TP, int], bool]) -> None:
        """From now on, of `topics`: an ack (a stream's, or a run's) counts toward a commit
        only for a record `is_applied`; the others are released (a rebalance waits for every
        record handed out) but never committed. The runs Faust's fetcher skips are not
        gaps any more (its commit would step over records never applied): the runtime
        reads them from the log and calls `mark_done` once it applied them."""
        self._guarded = frozenset(topics)
        self._is_applied = is_applied

    def ack(self, message: Any) -> bool:
        if message.topic in self._guarded and not self._is_applied(message.tp, message.offset):
            if not message.acked:  # what Consumer.ack does to release a message
                message.acked = True
                self._unacked_messages.discard(message)
                notify(self._waiting_for_ack)
            return False
        return bool(super().ack(message))

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        if tp.topic not in self._guarded:
            await super()._add_gap(tp, offset_from, offset_to)

    async def mark_done(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Offsets `offset_from..offset_to` (both included) count as done for Faust's commit,
        as the gaps its fetcher notes do: a run read from the log and applied."""
        await super()._add_gap(tp, offset_from, offset_to)

    @property
    def run_handlers(self) -> dict[str, RunHandler]:
        return cast(KeelFaustApp, self.app).run_handlers

    async def _drain_messages(self, fetcher: Any) -> None:
        # Faust's loop (faust.transport.consumer.Consumer._drain_messages with getmany
        # inlined), by partition run instead of by message. Without run handlers (the run
        # path off), Faust's own loop, unchanged.
        if not self.run_handlers:
            await super()._drain_messages(fetcher)
            return
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(1.0)
                # As Faust: getmany can return at once in a loop, never yielding.
                await self.sleep(0)
                if records is None or self.should_stop:
                    continue
                if not self.flow_active:
                    # As Faust's getmany: records fetched while the flow stopped (a rebalance
                    # began) are dropped, and the partitions go back to their committed offsets.
                    with contextlib.suppress(Exception):
                        await self.perform_seek()
                    continue
                generation = self.app.consumer_generation_id
                handlers = self.run_handlers
                for tp, run in records.items():
                    if not self.flow_active or self.app.consumer_generation_id != generation:
                        break
                    if not (active is None or tp in active or tp in self._buffered_partitions):
                        continue
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    handler = handlers.get(tp.topic)
                    if handler is None:
                        await self._deliver_each(tp, run, generation)
                    else:
                        await self._deliver_run(tp, run, handler)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except BaseException as exc:
            if isinstance(exc, Exception):
                self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _deliver_run(self, tp: TP, run: Sequence[Any], handler: RunHandler) -> None:
        rebalances = self.app.rebalancing_count
        read = self._read_offset[tp]
        # Below the read offset: handed over already, dropped as Faust's getmany drops them.
        # Not at it: after a seek (each assignment seeks to the committed offset) it is the
        # next offset to read, not the last one read, so Faust keeps `offset >= read`;
        # dropping it lost the first record after every restart (a replayed dead letter in
        # tests/streams/test_replay.py). One handed over twice is left out by the plan.
        if read is not None and run and run[0].offset < read:
            run = [r for r in run if r.offset >= read]
        if not run:
            return
        commit_every = self._commit_every
        if commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            await self.commit()
        # Faust's stall detector reads when a stream last took an event of the partition.
        self.app.monitor.stream_inbound_time[tp] = time.monotonic()
        in_flight = _RunInFlight(tp)
        self._unacked_messages.add(cast(Any, in_flight))
        try:
            await handler(tp, run)
            if self.app.rebalancing_count != rebalances:
                # A rebalance began since the run was taken (a run awaits the commit, its
                # outputs and sinks): Faust has dropped the partition's bookkeeping (`_acked`,
                # `_read_offset`) and seeks it back to its committed offset. Acking the run
                # or noting it as read now would put stale offsets back, and the records
                # between the commit and this run would be dropped as already read and
                # committed past. Unacked, the run is handled again by the partition's next
                # owner, and the dedup by event_id makes that harmless.
                return
            offsets = [r.offset for r in run]
            if tp.topic in self._guarded:  # the records the handler applied, no others
                applied = self._is_applied
                offsets = [o for o in offsets if applied(tp, o)]
            self._ack_run(tp, offsets)
        except Exception as exc:
            # Unacked, so never committed: the worker stops and its replacement (or the
            # partition's next owner) handles the run again from the last commit.
            self.log.exception("handling %s[%d] failed, stopping: %r", tp.topic, tp.partition, exc)
            await self.app.crash(exc)
            raise
        finally:
            in_flight.acked = True
            self._unacked_messages.discard(cast(Any, in_flight))
            notify(self._waiting_for_ack)
        self._read_offset[tp] = run[-1].offset  # not reached after a rebalance (above)

    def _ack_run(self, tp: TP, offsets: list[int]) -> None:
        """What `Consumer.ack` does for each message of a stream, for a whole run at once."""
        with ack_lock:
            committed = self._committed_offset[tp]
            if committed is not None:
                offsets = [o for o in offsets if o >= committed]
            index = self._acked_index[tp]
            if index:
                offsets = [o for o in offsets if o not in index]
            index.update(offsets)
            self._acked[tp].extend(offsets)
            self._n_acked += len(offsets)

    async def _deliver_each(self, tp: TP, run: Sequence[Any], generation: int) -> None:
        """Faust's own per-message path (changelogs in recovery, standbys, any topic without
        a run handler): one message at a time to the conductor."""
        callback = self.callback
        to_message = self._to_message
        read_offsets = self._read_offset
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        for i, record in enumerate(run):
            if not self.flow_active or self.app.consumer_generation_id != generation:
                return
            if i and not i % 100:
                await asyncio.sleep(0)
            message = to_message(tp, record)
            offset = message.offset
            read = read_offsets[tp]
            if read is None or offset >= read:
                if offset - (read or 0) > 1 and read and acks_enabled_for(message.topic):
                    await self._add_gap(tp, read + 1, offset)
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
                await self.wait_first(callback(message), self.suspend_flow.wait())
                read_offsets[tp] = offset


class _BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchConsumer


class KeelFaustApp(faust.App):
    """A `faust.App` whose consumer hands whole runs of the topics in `run_handlers`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run_handlers: dict[str, RunHandler] = {}

    def _new_transport(self) -> Any:
        return _BatchTransport(self.conf.broker_consumer, self)


def run_context_event(app: faust.App, tp: TP, record: Any) -> EventT:
    """A Faust event for a run's last record: what `partition_context` and the runtime's
    commit path take to know the partition, as they take a stream's last event."""
    consumer = cast(Any, app.consumer)
    message = consumer._to_message(tp, record)
    return app.create_event(record.key, record.value, record.headers, message)


@contextlib.contextmanager
def partition_context(event: EventT) -> Iterator[None]:
    """Make `event` the current event, so table reads and writes go to its partition's
    RocksDB and changelog partition. A batch holds several partitions; the runtime handles
    them one group at a time inside this context."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def table_db(table: Any, partition: int) -> Any:
    """The rocksdict `Rdict` of one partition of a table in Faust's RocksDB store."""
    return table.data._db_for_partition(partition)


def positions(consumer: Any, tp: TP) -> tuple[int | None, int | None]:
    """(committed offset, offset last handed over) of a partition: Faust's own bookkeeping
    in memory, None when unknown since the assignment."""
    return consumer._committed_offset.get(tp), consumer._read_offset.get(tp)


def owner_url(assignor: Any, tp: TP) -> str | None:
    """The URL of the worker the cluster's assignment gives `tp`, as Faust's router reads it."""
    url = getattr(assignor, "_tps_url", {}).get(tp)
    return str(url) if url else None


__all__ = [
    "FAUST_TESTED",
    "BatchConsumer",
    "KeelFaustApp",
    "RunHandler",
    "owner_url",
    "partition_context",
    "positions",
    "run_context_event",
    "table_db",
]
