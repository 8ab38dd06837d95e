"""`keel jobs ...`: run job workers, the local SMTP server, and read its outbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from keel.command_group import command_group
from keel.kafka import SILENT_LOG, make_admin, naming_brokers
from keel.logging import configure_logging
from keel.settings import KeelSettings, get_settings
from keel.signals import stop_on_signals

jobs_app = command_group(
    "jobs", "Background job workers (emails, reports) with retries and dead letters."
)


def outbox_dir(settings: KeelSettings) -> Path:
    return Path(settings.jobs_outbox_dir or settings.home / "outbox")


@jobs_app.command("worker")
def worker(
    types: Annotated[
        list[str] | None,
        typer.Argument(help="Job types to run (email, report, report_ready); all when none."),
    ] = None,
    http_port: Annotated[
        int | None, typer.Option(help="Port of /healthz, /readyz, /metrics (KEEL_JOBS_HTTP_PORT).")
    ] = None,
) -> None:
    """Run job workers until SIGTERM/Ctrl-C (in-flight jobs finish, offsets are committed)."""
    from keel.consumers.handlers import build_handlers
    from keel.consumers.worker import Worker

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    handlers = build_handlers(types or None, settings)
    job_worker = Worker(handlers, settings=settings, http_port=http_port)
    stop_on_signals(job_worker.stop_event)
    job_worker.run()


@jobs_app.command("topics")
def topics(
    types: Annotated[list[str] | None, typer.Argument(help="Job types; all when none.")] = None,
) -> None:
    """Create the job topics (source, retry, dead letters) that do not exist yet."""
    from keel.consumers.handlers import build_handlers
    from keel.consumers.worker import Worker

    settings = get_settings()
    handlers = build_handlers(types or None, settings)
    with naming_brokers(settings):
        Worker(handlers, settings=settings).ensure_topics(make_admin(settings, logger=SILENT_LOG))
    for handler in handlers:
        t = handler.topics
        typer.echo(f"{handler.name}: {t.source} (retry {t.retry}, dead letters {t.dlq})")


@jobs_app.command("dlq")
def dlq(
    job_type: Annotated[str, typer.Argument(help="Job type: email, report or report_ready.")],
    replay: Annotated[
        bool, typer.Option(help="Send the dead letters not replayed yet back as fresh jobs.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per letter.")] = False,
) -> None:
    """List a job type's dead letters (reason, attempts, error, where the job came from), or
    replay them once the cause is fixed."""
    from keel.consumers.deadletters import attempts, read
    from keel.consumers.deadletters import replay as replay_letters
    from keel.consumers.handlers import build_handlers

    settings = get_settings()
    [handler] = build_handlers([job_type], settings)
    topics = handler.topics
    if replay:
        group = f"{settings.jobs_topic_prefix}keel.jobs.{handler.name}.replay"
        letters = replay_letters(settings, topics, group)
        typer.echo(f"replayed {len(letters)} dead letter(s) from {topics.dlq} to {topics.source}")
        return
    letters = read(settings, topics)
    if not letters and not as_json:
        typer.echo(f"no dead letters in {topics.dlq}", err=True)
    for letter in letters:
        if as_json:
            typer.echo(json.dumps({**letter.to_dict(), "attempts": attempts(letter)}))
        else:
            typer.echo(
                f"{letter.partition}@{letter.offset}  {letter.reason:<17} attempts {attempts(letter)}"
                f"  from {letter.origin}  {letter.error}"
            )


@jobs_app.command("smtp")
def smtp(
    port: Annotated[int | None, typer.Option(help="Port (KEEL_SMTP_PORT).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    outbox: Annotated[Path | None, typer.Option(help="Folder (KEEL_JOBS_OUTBOX_DIR).")] = None,
) -> None:
    """Run the local SMTP server that keeps every message it receives in the outbox folder."""
    from keel.consumers.mail.server import Outbox, OutboxServer

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    folder = outbox or outbox_dir(settings)
    server = OutboxServer(Outbox(folder), host=host, port=port or settings.smtp_port)
    stop = stop_on_signals(None)
    bound = server.start()
    typer.echo(f"SMTP server on {host}:{bound}, keeping mail in {folder}", err=True)
    try:
        stop.wait()
    finally:
        server.stop()


@jobs_app.command("outbox")
def outbox(
    to: Annotated[str | None, typer.Option(help="Only mail to this address.")] = None,
    show: Annotated[
        int | None, typer.Option(help="Print message N in full (1 = oldest, -1 = newest).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per message.")] = False,
    folder: Annotated[
        Path | None, typer.Option(help="Outbox folder (KEEL_JOBS_OUTBOX_DIR).")
    ] = None,
) -> None:
    """List the emails the local SMTP server received (newest last)."""
    from keel.consumers.mail.server import Outbox

    box = Outbox(folder or outbox_dir(get_settings()))
    mails = box.messages()
    if to:
        mails = [m for m in mails if to in m.envelope_to or to == m.to]
    if show is not None:
        if not mails or show == 0 or abs(show) > len(mails):
            typer.echo(f"keel: error: no message {show}; the outbox has {len(mails)}", err=True)
            raise typer.Exit(1)
        mail = mails[show - 1 if show > 0 else show]
        typer.echo(f"From: {mail.message.get('From')}\nTo: {mail.to}\nSubject: {mail.subject}")
        typer.echo(f"Date: {mail.message.get('Date')}\nMessage-ID: {mail.message_id}\n")
        typer.echo(mail.text())
        return
    if not mails:
        typer.echo(f"no mail in {box.directory}", err=True)
        return
    for index, mail in enumerate(mails, 1):
        if as_json:
            row = {
                "n": index,
                "to": mail.to,
                "subject": mail.subject,
                "date": str(mail.message.get("Date", "")),
                "message_id": mail.message_id,
                "file": str(mail.path),
            }
            typer.echo(json.dumps(row))
        else:
            typer.echo(f"{index:4}  {mail.message.get('Date', '')}  {mail.to:<32}  {mail.subject}")
