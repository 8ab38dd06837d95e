"""The job component's part of the local stack: the SMTP server runs as its own process
(`python -m keel.consumers smtp`, as `keel up` starts it) and keeps what it receives."""

from __future__ import annotations

from pathlib import Path

from keel.consumers.mail.server import Outbox
from keel.consumers.mail.smtp import Mailer, build_message
from keel.consumers.mail.templates import Templates
from keel.consumers.services import services
from keel.local.ports import free_port as _free_port
from keel.local.services import ProcessService
from keel.settings import KeelSettings


def test_stack_declares_smtp_and_worker(tmp_path: Path) -> None:
    found = {s.name: s for s in services(KeelSettings(home=tmp_path))}
    assert set(found) == {"smtp", "jobs-worker"}
    worker = found["jobs-worker"]
    assert isinstance(worker, ProcessService)
    assert worker.argv[-4:] == ["keel.consumers", "worker", "--http-port", "8095"]
    assert worker.health_url == "http://127.0.0.1:8095/healthz"
    assert found["smtp"].order < worker.order


def test_smtp_service_process_keeps_mail_in_the_outbox(tmp_path: Path) -> None:
    settings = KeelSettings(home=tmp_path, smtp_port=_free_port())
    smtp = next(s for s in services(settings) if s.name == "smtp")
    assert smtp.start(progress=lambda _m: None)
    try:
        assert smtp.status().healthy
        rendered = Templates().render("welcome", {"user_id": "u-9"})
        message = build_message(rendered, sender="a@b.c", to="new@example.com", message_id="<x@y>")
        Mailer("127.0.0.1", settings.smtp_port).send(message)
    finally:
        smtp.stop(progress=lambda _m: None)
    [mail] = Outbox(tmp_path / "outbox").messages()
    assert mail.envelope_to == ["new@example.com"]
