"""Tumbling windows over epoch-microsecond timestamps, and their expiry. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from keel.streams.errors import BadQuery

SECOND_US = 1_000_000
MINUTE_US = 60 * SECOND_US
HOUR_US = 60 * MINUTE_US
DAY_US = 24 * HOUR_US


def window_start(ts_us: int, size_us: int) -> int:
    return ts_us - ts_us % size_us


def iso(ts_us: int) -> str:
    """`2026-11-28T08:00:00Z` for a window start."""
    return datetime.fromtimestamp(ts_us / SECOND_US, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_window(text: str, size_us: int) -> int:
    """The start (µs) of the window holding `text`: ISO 8601 (`2026-11-28T08:00Z`, offsets
    allowed, naive = UTC) or epoch seconds. Raises BadQuery naming the value."""
    text = text.strip()
    try:
        if text.lstrip("-").isdigit():
            ts_us = int(text) * SECOND_US
        else:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            ts_us = int(parsed.timestamp()) * SECOND_US
    except ValueError as exc:
        raise BadQuery(
            f"window {text!r} is not an ISO 8601 time (e.g. 2026-11-28T08:00:00Z) or epoch seconds"
        ) from exc
    return window_start(ts_us, size_us)


def expire(windows: dict[str, Any], newest_us: int, size_us: int, keep: int) -> dict[str, Any]:
    """Drop windows (keyed by their start in µs, as strings) older than the `keep` newest
    window starts counted back from `newest_us`; returns the same dict."""
    horizon = window_start(newest_us, size_us) - (keep - 1) * size_us
    for start in [s for s in windows if int(s) < horizon]:
        del windows[start]
    return windows


def is_expired(start_us: int, newest_us: int, size_us: int, keep: int) -> bool:
    return start_us < window_start(newest_us, size_us) - (keep - 1) * size_us


def newest(windows: Mapping[str, Any]) -> int | None:
    return max((int(s) for s in windows), default=None)
