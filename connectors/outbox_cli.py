"""`keel outbox ...`: the transactional outbox source (PostgreSQL rows -> Kafka events)."""

from __future__ import annotations

from keel.command_group import command_group

outbox_app = command_group(
    "outbox", "Transactional outbox source: events written in a PostgreSQL transaction, to Kafka."
)
