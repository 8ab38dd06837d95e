"""Stopping a long-running command cleanly: SIGTERM (an orchestrator, `keel down`) and
SIGINT (Ctrl-C) set an event the command's loop watches, so it finishes what it holds and
commits before it exits."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable


def stop_on_signals(
    stop: threading.Event | None = None, callback: Callable[[], object] | None = None
) -> threading.Event:
    """The event SIGTERM and SIGINT set (a new one unless given); `callback` runs too."""
    event = stop or threading.Event()

    def handler(_signum: int, _frame: object) -> None:
        event.set()
        if callback is not None:
            callback()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return event
