"""`keel pgsink ...`: the PostgreSQL sink (Kafka events -> rows of a PostgreSQL table)."""

from __future__ import annotations

from keel.command_group import command_group

pgsink_app = command_group(
    "pgsink", "PostgreSQL sink: events from Kafka into a table, each event_id once."
)
