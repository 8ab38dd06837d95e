"""Keel's job types: `email` (a templated email over SMTP), `report` (CSV + PNG into the report
store, then a `report.ready` event) and `report_ready` (a `report.ready` event on `events`
becomes a "your report is ready" email job).

Every id a handler derives is a uuid5 of the job's idempotency key, so a job redone after a
crash produces the very same report folder, event id and email job, and the next step's
idempotency check recognises it.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keel.consumers.errors import JobConfigError, PermanentJobError, RetriableJobError
from keel.consumers.job import Job, JobHandler, JobTopics
from keel.consumers.mail.smtp import Mailer, build_message
from keel.consumers.mail.templates import Templates
from keel.consumers.reports import FORMATS, REPORT_KINDS, ReportStore, ViewsClient, build_table
from keel.kafka import make_producer
from keel.settings import KeelSettings, get_settings

log = logging.getLogger(__name__)

# Namespace of every id derived from an idempotency key.
KEEL_JOBS_NS = uuid.UUID("6f1c3a52-8d0e-4c55-9a57-2f6b1d0e7a11")
SOURCE = "keel-jobs"


def derived_id(kind: str, key: str) -> str:
    return str(uuid.uuid5(KEEL_JOBS_NS, f"{kind}:{key}"))


def _serde(settings: KeelSettings) -> Any:
    from keel.schemas.registry.client import RegistryClient
    from keel.schemas.serde import AvroSerde

    return AvroSerde(RegistryClient(settings.schema_registry_url))


def _topic_of(event_type: str) -> str:
    from keel.schemas.catalog import load_catalog

    return str(load_catalog().get(event_type).topic)


class Emitter:
    """Encodes and produces events with its own producer, waiting for the broker's ack: a job
    that emits is done only once what it emitted is durable."""

    def __init__(self, settings: KeelSettings, serde: Any = None, timeout: float = 30.0) -> None:
        self.settings = settings
        self.serde = serde
        self.timeout = timeout
        self._producer: Any = None
        self._lock = threading.Lock()

    def start(self) -> None:
        if self.serde is None:
            self.serde = _serde(self.settings)
        self._producer = make_producer(self.settings)

    def emit(self, topic: str, event_type: str, key: str, record: Mapping[str, Any]) -> None:
        if self._producer is None:
            self.start()
        value = self.serde.encode(event_type, record)
        done = threading.Event()
        errors: list[Any] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(err)
            done.set()

        self._producer.produce(topic, value=value, key=key.encode(), on_delivery=delivered)
        with self._lock:  # flush serves the callbacks of every thread's messages
            self._producer.flush(self.timeout)
        if not done.is_set():
            raise RetriableJobError(f"{event_type} to {topic} not acknowledged in {self.timeout}s")
        if errors:
            raise RetriableJobError(f"producing {event_type} to {topic} failed: {errors[0]}")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.timeout)


class EmailJob(JobHandler):
    """`job.email`: render the template with the job's `data_json` and send it to `to`."""

    name = "email"

    def __init__(
        self,
        mailer: Mailer,
        *,
        sender: str,
        templates: Templates | None = None,
        topics: JobTopics | None = None,
    ) -> None:
        super().__init__(topics)
        self.mailer = mailer
        self.sender = sender
        self.templates = templates or Templates()

    @classmethod
    def from_settings(cls, settings: KeelSettings, topics: JobTopics | None = None) -> EmailJob:
        topics = topics or JobTopics.for_job(cls.name, prefix=settings.jobs_topic_prefix)
        return cls(Mailer.from_settings(settings), sender=settings.smtp_from, topics=topics)

    def handle(self, job: Job) -> Mapping[str, Any]:
        record = job.record
        to = record.get("to")
        if not to:
            raise PermanentJobError("email job has no recipient: 'to' is null")
        template = str(record.get("template", ""))
        try:
            data = json.loads(record.get("data_json") or "{}")
        except json.JSONDecodeError as exc:
            raise PermanentJobError(f"data_json is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise PermanentJobError(f"data_json must be a JSON object, got {type(data).__name__}")
        context = {**data, "user_id": record.get("user_id"), "job_id": record.get("job_id")}
        rendered = self.templates.render(template, context)
        message_id = f"<{job.idempotency_key}.{template}@keel.jobs>"
        message = build_message(
            rendered,
            sender=self.sender,
            to=str(to),
            message_id=message_id,
            headers={
                "X-Keel-Job-Id": str(record.get("job_id", "")),
                "X-Keel-Idempotency-Key": job.idempotency_key,
                "X-Keel-Template": template,
            },
        )
        self.mailer.send(message)
        log.info("sent %s email to %s", template, to, extra={"event_id": job.idempotency_key})
        return {"to": to, "template": template, "message_id": message_id}


class ReportJob(JobHandler):
    """`job.report`: build the report from the user's view, store CSV + PNG, emit
    `report.ready` (event id derived from the job's key: a rebuilt report is the same event)."""

    name = "report"

    def __init__(
        self,
        store: ReportStore,
        views: ViewsClient,
        emitter: Emitter,
        *,
        events_topic: str | None = None,
        topics: JobTopics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(topics)
        self.store = store
        self.views = views
        self.emitter = emitter
        self.events_topic = events_topic
        self.clock = clock

    @classmethod
    def from_settings(
        cls, settings: KeelSettings, topics: JobTopics | None = None, **kwargs: Any
    ) -> ReportJob:
        root = settings.jobs_report_dir or settings.home / "reports"
        topics = topics or JobTopics.for_job(cls.name, prefix=settings.jobs_topic_prefix)
        return cls(
            ReportStore(Path(root)),
            ViewsClient(
                settings.jobs_views_url,
                api_key=settings.views_api_key.get_secret_value()
                if settings.views_api_key
                else None,
            ),
            Emitter(settings),
            topics=topics,
            **kwargs,
        )

    def start(self) -> None:
        self.emitter.start()
        if self.events_topic is None:
            self.events_topic = _topic_of("report.ready")

    def close(self) -> None:
        self.emitter.close()

    def handle(self, job: Job) -> Mapping[str, Any]:
        record = job.record
        kind = str(record.get("kind", ""))
        user_id = str(record["user_id"])
        view_name = REPORT_KINDS.get(kind)
        if view_name is None:
            raise PermanentJobError(
                f"unknown report kind {kind!r}; known: {', '.join(REPORT_KINDS)}"
            )
        start, end = record.get("period_start"), record.get("period_end")
        if not isinstance(start, datetime) or not isinstance(end, datetime) or end < start:
            raise PermanentJobError(f"bad report period {start!r} .. {end!r}")
        view = self.views.get(view_name, user_id)
        if view is None:
            # the streams may not have caught up with this user yet: worth another try
            raise RetriableJobError(f"no {view_name} view for user {user_id!r} yet")
        table = build_table(kind, user_id, view, (start, end))
        report_id = derived_id("report", job.idempotency_key)
        location = self.store.save(user_id, report_id, table)
        now = self.clock()
        event_id = derived_id("report.ready", job.idempotency_key)
        ready = {
            "event_id": event_id,
            "type": "report.ready",
            "user_id": user_id,
            "occurred_at": now,
            "received_at": now,
            "source": SOURCE,
            "context": None,
            "report_id": report_id,
            "kind": kind,
            "location": str(location),
            "formats": list(FORMATS),
            "to": record.get("to"),
        }
        topic = self.events_topic or _topic_of("report.ready")
        self.emitter.emit(topic, "report.ready", user_id, ready)
        log.info(
            "report %s stored at %s", report_id, location, extra={"event_id": job.idempotency_key}
        )
        return {"report_id": report_id, "location": str(location), "event_id": event_id}


class ReportReadyTrigger(JobHandler):
    """`report.ready` on the shared `events` topic -> a `report_ready` email job whose
    idempotency key is the event's id."""

    name = "report_ready"
    record_name = "keel.events.ReportReady"

    def __init__(
        self,
        emitter: Emitter,
        *,
        email_topic: str | None = None,
        topics: JobTopics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(topics)
        self.emitter = emitter
        self.email_topic = email_topic
        self.clock = clock

    @classmethod
    def default_source(cls) -> str | None:
        return "events"

    @classmethod
    def from_settings(
        cls, settings: KeelSettings, topics: JobTopics | None = None, **kwargs: Any
    ) -> ReportReadyTrigger:
        topics = topics or JobTopics.for_job(
            cls.name, cls.default_source(), prefix=settings.jobs_topic_prefix
        )
        if settings.jobs_topic_prefix:
            kwargs.setdefault("email_topic", f"{settings.jobs_topic_prefix}jobs.email")
        return cls(Emitter(settings), topics=topics, **kwargs)

    def start(self) -> None:
        self.emitter.start()
        if self.email_topic is None:
            self.email_topic = _topic_of("job.email")

    def close(self) -> None:
        self.emitter.close()

    def handle(self, job: Job) -> Mapping[str, Any]:
        event = job.record
        event_id = str(event["event_id"])
        data = {
            "report_id": event.get("report_id"),
            "kind": event.get("kind"),
            "location": event.get("location"),
            "formats": list(event.get("formats") or []),
        }
        email_job = {
            "job_id": derived_id("job.email", event_id),
            "idempotency_key": event_id,
            "created_at": self.clock(),
            "user_id": str(event["user_id"]),
            "template": "report_ready",
            "to": event.get("to"),
            "data_json": json.dumps(data),
        }
        topic = self.email_topic or _topic_of("job.email")
        self.emitter.emit(topic, "job.email", str(event["user_id"]), email_job)
        return {"email_job_id": email_job["job_id"]}


JOB_TYPES: dict[str, Callable[[KeelSettings], JobHandler]] = {
    "email": EmailJob.from_settings,
    "report": ReportJob.from_settings,
    "report_ready": ReportReadyTrigger.from_settings,
}


def build_handlers(
    names: list[str] | None = None, settings: KeelSettings | None = None
) -> list[JobHandler]:
    """Handlers for the named job types (all when none is named)."""
    settings = settings or get_settings()
    names = names or list(JOB_TYPES)
    unknown = [n for n in names if n not in JOB_TYPES]
    if unknown:
        raise JobConfigError(
            f"unknown job type(s) {', '.join(unknown)}; known: {', '.join(JOB_TYPES)}"
        )
    return [JOB_TYPES[name](settings) for name in dict.fromkeys(names)]
