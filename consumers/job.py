"""What a handler sees (`Job`) and what it implements (`JobHandler`).

A handler is registered for one job type: it reads the Avro job events of its source topic
(plus its retry topic), does one side effect per job and returns the outcome, which is
recorded with the job's idempotency key so that a redelivered job is not done twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from keel.consumers.retry import Origin


@dataclass(frozen=True)
class JobTopics:
    """The three topics of a job type: where jobs come from, wait for a retry, and die."""

    source: str
    retry: str
    dlq: str

    @classmethod
    def for_job(cls, name: str, source: str | None = None, prefix: str = "") -> JobTopics:
        """`jobs.<name>` by default, with `jobs.<name>.retry` and `jobs.<name>.dlq` (each
        behind `prefix`, which keeps tests apart; a shared source such as `events` keeps its
        name)."""
        base = f"{prefix}jobs.{name}"
        return cls(source or base, f"{base}.retry", f"{base}.dlq")


class Job:
    """One job as a handler sees it: the decoded record and where it was read.

    A plain slotted class rather than a dataclass: one is made per message on the hot path.
    """

    __slots__ = (
        "attempt",
        "headers",
        "job_type",
        "key",
        "offset",
        "partition",
        "record",
        "timestamp_ms",
        "topic",
    )

    def __init__(  # noqa: PLR0917 - built positionally once per message
        self,
        job_type: str,
        record: Mapping[str, Any],
        key: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        timestamp_ms: int,
        attempt: int = 1,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.job_type = job_type
        self.record = record
        self.key = key
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp_ms = timestamp_ms
        self.attempt = attempt  # this run's attempt number, 1 for a fresh job
        self.headers = headers or {}

    @property
    def origin(self) -> Origin:
        """Where the job was first read (kept in headers through the retry topic)."""
        return Origin.of(self.headers, self.topic, self.partition, self.offset, self.timestamp_ms)

    @property
    def idempotency_key(self) -> str:
        """The originating event id (jobs carry it; events are their own key)."""
        for field in ("idempotency_key", "event_id"):
            value = self.record.get(field)
            if value:
                return str(value)
        return f"{self.origin.topic}:{self.origin.partition}:{self.origin.offset}"

    @property
    def created_at(self) -> datetime | None:
        """When the trigger created the job (or the event was received), for latency."""
        for field in ("created_at", "received_at"):
            value = self.record.get(field)
            if isinstance(value, datetime):
                return value
        return None


class JobHandler(ABC):
    """One job type. Subclasses set `name` and implement `handle`.

    `handle` raises `RetriableJobError` / `PermanentJobError` (or anything else, which is
    retried) and returns a small JSON-able outcome recorded with the done key.
    """

    name: ClassVar[str]
    # Only records with this full Avro name are handled (for job types that read a shared
    # topic such as `events`); the others are skipped as not ours.
    record_name: ClassVar[str | None] = None
    # Record a done key per job and skip a job whose key is already done.
    idempotent: ClassVar[bool] = True

    def __init__(self, topics: JobTopics | None = None) -> None:
        self.topics = topics or JobTopics.for_job(self.name, self.default_source())

    @classmethod
    def default_source(cls) -> str | None:
        return None

    def start(self) -> None:  # noqa: B027 - optional hook
        """Open what the handler needs (called once, before the first job)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release it (called once, at shutdown)."""

    @abstractmethod
    def handle(self, job: Job) -> Mapping[str, Any] | None:
        """Do the job's side effect; return its outcome."""
