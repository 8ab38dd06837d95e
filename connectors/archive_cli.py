"""`keel archive ...`: the archive sink (Kafka events -> files, by hour and partition)."""

from __future__ import annotations

from keel.command_group import command_group

archive_app = command_group(
    "archive", "Archive sink: events from Kafka into files by hour and partition, and back."
)
