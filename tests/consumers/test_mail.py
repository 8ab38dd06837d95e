"""Templates render what the job carries; the mailer talks SMTP to a real server on loopback
and splits its failures into retriable and permanent ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keel.consumers.errors import PermanentJobError, RetriableJobError
from keel.consumers.mail.server import Outbox, OutboxServer
from keel.consumers.mail.smtp import Mailer, build_message
from keel.consumers.mail.templates import Templates
from tests.consumers.conftest import RefusingHandler

ORDER = {
    "order_id": "o-981",
    "items": [
        {"sku": "SKU-1", "name": "Blue mug", "quantity": 2, "price": "12.50"},
        {"sku": "SKU-2", "quantity": 1, "price": 5},
    ],
    "total": "30.00",
    "currency": "EUR",
    "user_id": "u-1",
}


def test_known_templates() -> None:
    assert {"welcome", "order_receipt", "report_ready"} <= set(Templates().names())


def test_order_receipt_carries_the_orders_data() -> None:
    mail = Templates().render("order_receipt", ORDER)
    assert mail.subject == "Your receipt for order o-981"
    assert "2 x Blue mug  12.50 EUR" in mail.text
    assert "1 x SKU-2  5.00 EUR" in mail.text
    assert "Total: 30.00 EUR" in mail.text
    assert mail.html is not None and "Blue mug" in mail.html


def test_order_receipt_from_the_order_placed_event_shape() -> None:
    # what the streams trigger puts in data_json for an `order.placed` event
    data = {
        "user_id": "u-2",
        "event_id": "e-1",
        "order_id": "o-7",
        "items": [{"product_id": "p-1", "quantity": 2, "unit_price": "9.99"}],
        "total": "19.98",
        "currency": "EUR",
    }
    mail = Templates().render("order_receipt", data)
    assert "2 x p-1  9.99 EUR" in mail.text and "Total: 19.98 EUR" in mail.text
    assert mail.html is not None and "p-1" in mail.html


def test_html_is_escaped() -> None:
    mail = Templates().render("welcome", {"user_id": "u-1", "name": "<script>x</script>"})
    assert mail.html is not None and "<script>" not in mail.html
    assert "&lt;script&gt;" in mail.html


def test_missing_variable_and_unknown_template_are_permanent() -> None:
    with pytest.raises(PermanentJobError, match="order_id"):
        Templates().render("order_receipt", {"user_id": "u", "items": [], "total": 1})
    with pytest.raises(PermanentJobError, match="unknown email template 'nope'"):
        Templates().render("nope", {})


def _message(to: str = "ann@example.com") -> object:
    rendered = Templates().render("welcome", {"user_id": "u-1", "name": "Ann"})
    return build_message(
        rendered,
        sender="Keel <no-reply@keel.localhost>",
        to=to,
        message_id="<k1.welcome@keel.jobs>",
    )


def test_sends_to_a_real_smtp_server(smtp_server: OutboxServer) -> None:
    Mailer("127.0.0.1", smtp_server.port).send(_message())  # type: ignore[arg-type]
    [mail] = smtp_server.outbox.messages()
    assert mail.envelope_to == ["ann@example.com"]
    assert mail.subject == "Welcome to Keel, Ann!"
    assert mail.message_id == "<k1.welcome@keel.jobs>"
    assert "Hello Ann" in mail.text()


def test_4xx_is_retriable_and_refused_connection_too(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "box")
    server = OutboxServer(outbox, port=0, handler=RefusingHandler(outbox, refuse=1))
    with server:
        mailer = Mailer("127.0.0.1", server.port)
        with pytest.raises(RetriableJobError, match="451"):
            mailer.send(_message())  # type: ignore[arg-type]
        mailer.send(_message())  # type: ignore[arg-type]
    assert len(outbox.messages()) == 1
    with pytest.raises(RetriableJobError, match="ConnectionRefused"):
        Mailer("127.0.0.1", server.port, timeout=2).send(_message())  # type: ignore[arg-type]


def test_5xx_is_permanent(tmp_path: Path) -> None:
    class Rejecting(RefusingHandler):
        async def handle_RCPT(self, server, session, envelope, address, options):  # type: ignore[no-untyped-def]
            return "550 5.1.1 no such user"

    outbox = Outbox(tmp_path / "box")
    with (
        OutboxServer(outbox, port=0, handler=Rejecting(outbox, 0)) as server,
        pytest.raises(PermanentJobError, match="550"),
    ):
        Mailer("127.0.0.1", server.port).send(_message())  # type: ignore[arg-type]
    assert outbox.messages() == []


def test_outbox_command_lists_and_shows(smtp_server: OutboxServer, tmp_path: Path) -> None:
    import subprocess
    import sys

    Mailer("127.0.0.1", smtp_server.port).send(_message())  # type: ignore[arg-type]
    keel = str(Path(sys.executable).parent / "keel")
    folder = str(smtp_server.outbox.directory)
    listed = subprocess.run(
        [keel, "jobs", "outbox", "--folder", folder, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    row = json.loads(listed.stdout.strip().splitlines()[-1])
    assert row["to"] == "ann@example.com" and row["subject"] == "Welcome to Keel, Ann!"
    shown = subprocess.run(
        [keel, "jobs", "outbox", "--folder", folder, "--show", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert shown.returncode == 0 and "Hello Ann" in shown.stdout
    missing = subprocess.run(
        [keel, "jobs", "outbox", "--folder", folder, "--show", "5"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 1 and "no message 5" in missing.stderr
