"""Sending email over SMTP (smtplib), with SMTP failures split into retriable (4xx answers,
refused or lost connections, timeouts) and permanent (5xx answers) job errors."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate

from keel.consumers.errors import PermanentJobError, RetriableJobError
from keel.consumers.mail.templates import RenderedEmail
from keel.settings import KeelSettings


def build_message(
    rendered: RenderedEmail,
    *,
    sender: str,
    to: str,
    message_id: str,
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    """A MIME message; its Message-ID is derived from the job's idempotency key, so even a
    duplicate that slipped through would be recognised as the same mail by mail clients."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = rendered.subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = message_id
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(rendered.text)
    if rendered.html is not None:
        message.add_alternative(rendered.html, subtype="html")
    return message


class Mailer:
    """Sends one message per call through the configured SMTP server."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.starttls = starttls
        self.timeout = timeout

    @classmethod
    def from_settings(cls, settings: KeelSettings) -> Mailer:
        return cls(
            settings.smtp_host,
            settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
            starttls=settings.smtp_starttls,
            timeout=settings.smtp_timeout_s,
        )

    def send(self, message: EmailMessage) -> None:
        where = f"SMTP {self.host}:{self.port}"
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            text = "; ".join(
                f"{rcpt}: {code} {msg!r}" for rcpt, (code, msg) in exc.recipients.items()
            )
            if all(400 <= code < 500 for code in codes):
                raise RetriableJobError(f"{where} deferred recipients: {text}") from exc
            raise PermanentJobError(f"{where} refused recipients: {text}") from exc
        except smtplib.SMTPResponseException as exc:
            detail = (
                exc.smtp_error.decode("utf-8", "replace")
                if isinstance(exc.smtp_error, bytes)
                else str(exc.smtp_error)
            )
            if 400 <= exc.smtp_code < 500:
                raise RetriableJobError(f"{where} answered {exc.smtp_code} {detail}") from exc
            raise PermanentJobError(f"{where} answered {exc.smtp_code} {detail}") from exc
        except (smtplib.SMTPException, OSError) as exc:  # refused, lost, timed out
            raise RetriableJobError(f"{where}: {type(exc).__name__}: {exc}") from exc
