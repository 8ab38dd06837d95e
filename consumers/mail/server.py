"""The local SMTP server of the stack (aiosmtpd): it accepts every message and keeps it in
the outbox folder, one `.eml` file per message, so a newcomer can read what the workers sent
(`keel jobs outbox`, or any mail client that opens .eml files)."""

from __future__ import annotations

import email
import email.policy
import os
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

ENVELOPE_FROM = "X-Keel-Envelope-From"
ENVELOPE_TO = "X-Keel-Envelope-To"


@dataclass(frozen=True)
class StoredMail:
    path: Path
    envelope_from: str
    envelope_to: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message.get("Subject", ""))

    @property
    def to(self) -> str:
        return str(self.message.get("To", ""))

    @property
    def message_id(self) -> str:
        return str(self.message.get("Message-ID", ""))

    def text(self) -> str:
        body = self.message.get_body(preferencelist=("plain", "html"))
        return "" if body is None else str(body.get_content())


class Outbox:
    """A folder of received messages, oldest first."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, envelope_from: str, envelope_to: list[str], content: bytes) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.eml"
        prefix = f"{ENVELOPE_FROM}: {envelope_from}\r\n{ENVELOPE_TO}: {', '.join(envelope_to)}\r\n"
        tmp = self.directory / f".{name}.tmp"
        tmp.write_bytes(prefix.encode() + content)
        os.replace(tmp, self.directory / name)  # readers never see half a message
        return self.directory / name

    def messages(self) -> list[StoredMail]:
        if not self.directory.is_dir():
            return []
        out = []
        for path in sorted(self.directory.glob("*.eml")):
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if not isinstance(message, EmailMessage):  # the default policy always makes one
                continue
            out.append(
                StoredMail(
                    path,
                    str(message.get(ENVELOPE_FROM, "")),
                    [a.strip() for a in str(message.get(ENVELOPE_TO, "")).split(",") if a.strip()],
                    message,
                )
            )
        return out


class OutboxHandler:
    """aiosmtpd handler: keep every message in the outbox."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8")
        path = self.outbox.save(envelope.mail_from, list(envelope.rcpt_tos), content)
        return f"250 OK kept as {path.name}"


class OutboxServer:
    """A real SMTP server on `host:port` (port 0 picks a free one) keeping mail in `outbox`."""

    def __init__(
        self, outbox: Outbox, host: str = "127.0.0.1", port: int = 2525, handler: Any = None
    ) -> None:
        self.outbox = outbox
        self.host = host
        self.port = port
        self.handler = handler or OutboxHandler(outbox)
        self._controller: Controller | None = None

    def start(self) -> int:
        if self.port == 0:
            import socket

            with socket.socket() as sock:
                sock.bind((self.host, 0))
                self.port = sock.getsockname()[1]
        self._controller = Controller(
            self.handler, hostname=self.host, port=self.port, ready_timeout=10
        )
        self._controller.start()
        return self.port

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> OutboxServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
