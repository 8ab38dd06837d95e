"""Fixtures of the job workers' tests: a real SMTP server on loopback keeping what it gets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consumers.mail.server import Outbox, OutboxHandler, OutboxServer


class RefusingHandler(OutboxHandler):
    """A mail server that answers `451 try again later` to the first `refuse` messages (as a
    busy or greylisting server does), then keeps mail like the local one."""

    def __init__(self, outbox: Outbox, refuse: int) -> None:
        super().__init__(outbox)
        self.refuse = refuse
        self.refused = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refused < self.refuse:
            self.refused += 1
            return "451 4.3.2 try again later"
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[OutboxServer]:
    server = OutboxServer(Outbox(tmp_path / "outbox"), port=0)
    server.start()
    yield server
    server.stop()
