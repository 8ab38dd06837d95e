"""A JSON-lines file sink: Keel events appended to one file, one JSON object a line.

The README's walk-through of the Sink API: a whole sink in one class on `keel.runtime`,
which reads, decodes through the registry, batches, dead-letters what is not a Keel event
and commits offsets only after `write` returned. What is left to the sink is its I/O: turn
an event into a line, append a batch and make it durable (fsync) before the commit.

At least once: a sink stopped between its fsync and the offset commit appends that batch
again when it restarts; each line carries the event_id, so a reader drops repeats.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Message

from keel.deadletters import Failure
from keel.errors import KeelError
from keel.metrics import ConsumerMetrics
from keel.runtime import Batch, BatchingSink, BatchRunner, RunnerConfig, Skip, Written
from keel.schemas.catalog import load_catalog
from keel.schemas.errors import DecodeError, RegistryError
from keel.schemas.registry.client import RegistryClient
from keel.schemas.serde import AvroSerde
from keel.settings import KeelSettings


class NotAnEvent(KeelError):
    """Avro that decoded but carries no event_id (its dead letter's keel.error.class)."""


class JsonLinesSink(BatchingSink[bytes]):
    component = "jsonl"
    transient = (OSError,)  # a full disk or a lost mount: retried, nothing committed

    def __init__(self, settings: KeelSettings, path: Path, config: RunnerConfig) -> None:
        self.path = path
        self.serde = AvroSerde(RegistryClient(settings.schema_registry_url), load_catalog())
        self.counts = ConsumerMetrics(self.component)
        self.runner = BatchRunner(
            self,
            settings,
            config,
            decode=self.serde.decode_plain,
            undecodable=(RegistryError, DecodeError, ValueError),
            metrics=self.counts,
        )

    def item(self, message: Message, value: Any) -> bytes | Skip | Failure:
        if not isinstance(value.get("event_id"), str):
            return Failure.of(NotAnEvent("no event_id: not a Keel event"))
        line = {**value, "_topic": message.topic(), "_offset": message.offset()}
        return orjson.dumps(line, default=str) + b"\n"

    def write(self, batch: Batch[bytes]) -> Written:
        with self.path.open("ab") as out:
            out.write(b"".join(batch.items))
            out.flush()
            os.fsync(out.fileno())  # durable before the runtime commits the offsets
        return Written(len(batch.items))
