"""Dedup by `event_id` within a window, and the offset watermarks that make replays idempotent.

Pure. Why both:
- A client that retries sends the same `event_id` again at a NEW offset: the dedup entry
  `[first_offset, first_ts_ms]` says it was seen, so no view or trigger counts it twice.
- A worker that crashes replays messages from its last committed offset: those arrive at
  the SAME offset. Every state value carries the offset of the last event applied to it
  (one changelog record holds both, so they cannot disagree), and an event at or below
  that watermark is skipped. A dedup entry whose offset equals the message's offset is the
  message itself coming back, not a duplicate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DedupEntry = Sequence[int]  # [first_offset, first_timestamp_ms]


def replay_key(processor: str, event_id: str) -> str:
    """The dedup entry of a replayed dead letter that `processor` applied: keyed by the event,
    not the letter's address, so a letter of a replay that raised again counts as the same
    event as the letter it came from. (An event_id is a canonical UUID: no clash.)"""
    return f"replay:{processor}:{event_id}"


def is_duplicate(entry: DedupEntry | None, offset: int, ts_ms: int, window_ms: int) -> bool:
    """True when `event_id` was first seen at another offset within the window."""
    if entry is None:
        return False
    first_offset, first_ts = int(entry[0]), int(entry[1])
    if first_offset == offset:
        return False
    return abs(ts_ms - first_ts) <= window_ms


def needs_entry(entry: DedupEntry | None, offset: int, ts_ms: int, window_ms: int) -> bool:
    """Whether a (non-duplicate) event must (re)write its dedup entry."""
    if entry is None:
        return True
    return int(entry[0]) != offset


def after(watermark: Any, position: Sequence[int]) -> bool:
    """True when `position` ([offset] or [offset, seq]) comes after `watermark` (None: nothing)."""
    if watermark is None:
        return True
    return list(position) > list(watermark)
