"""The built-in handlers' checks on their input, on a real SMTP server: bad jobs are
permanent failures naming what was wrong, and nothing is sent."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keel.consumers.errors import PermanentJobError
from keel.consumers.handlers import EmailJob, Emitter, ReportJob, derived_id
from keel.consumers.job import Job
from keel.consumers.mail.server import OutboxServer
from keel.consumers.mail.smtp import Mailer
from keel.consumers.reports import ReportStore, ViewsClient
from keel.settings import KeelSettings


def job(record: dict[str, Any], key: str = "k-1") -> Job:
    return Job("email", {"idempotency_key": key, "user_id": "u-1", **record}, b"u-1", "t", 0, 0, 0)


@pytest.fixture
def email(smtp_server: OutboxServer) -> EmailJob:
    return EmailJob(Mailer("127.0.0.1", smtp_server.port), sender="k@keel.localhost")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"template": "welcome", "to": None, "data_json": "{}"}, "'to' is null"),
        ({"template": "welcome", "to": "a@b.c", "data_json": "{nope"}, "data_json is not JSON"),
        ({"template": "welcome", "to": "a@b.c", "data_json": "[1]"}, "must be a JSON object"),
        ({"template": "bogus", "to": "a@b.c", "data_json": "{}"}, "unknown email template"),
        ({"template": "order_receipt", "to": "a@b.c", "data_json": "{}"}, "undefined"),
    ],
)
def test_bad_email_jobs_are_permanent(
    email: EmailJob, smtp_server: OutboxServer, record: dict[str, Any], message: str
) -> None:
    with pytest.raises(PermanentJobError, match=message):
        email.handle(job(record))
    assert smtp_server.outbox.messages() == []


def test_email_outcome_and_message_id_follow_the_key(
    email: EmailJob, smtp_server: OutboxServer
) -> None:
    data = json.dumps({"name": "Ann"})
    outcome = email.handle(job({"template": "welcome", "to": "a@b.c", "data_json": data}, "k-9"))
    assert outcome == {
        "to": "a@b.c",
        "template": "welcome",
        "message_id": "<k-9.welcome@keel.jobs>",
    }
    [mail] = smtp_server.outbox.messages()
    assert mail.message_id == "<k-9.welcome@keel.jobs>"


def test_report_rejects_unknown_kind_and_bad_period(tmp_path: Path) -> None:
    report = ReportJob(
        ReportStore(tmp_path),
        ViewsClient("http://127.0.0.1:1"),
        Emitter(KeelSettings()),
        events_topic="unused",
    )
    now = datetime.now(UTC)
    good = {"kind": "activity", "period_start": now - timedelta(days=1), "period_end": now}
    with pytest.raises(PermanentJobError, match="unknown report kind 'sales'"):
        report.handle(job({**good, "kind": "sales"}))
    with pytest.raises(PermanentJobError, match="bad report period"):
        report.handle(job({**good, "period_end": now - timedelta(days=2)}))
    assert list(tmp_path.iterdir()) == []


def test_derived_ids_are_stable_per_key() -> None:
    assert derived_id("report", "e-1") == derived_id("report", "e-1")
    assert derived_id("report", "e-1") != derived_id("report.ready", "e-1")
