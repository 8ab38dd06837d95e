"""A stopping stream worker ends within its shutdown timeout, whatever the brokers do.

Faust's graceful stop waits for the consumer's last commit, which aiokafka retries for as
long as the group coordinator does not answer: with the brokers gone a worker told to stop
lived on for minutes. Past the timeout it now exits without finishing, as a crash would:
nothing it did not commit is lost (offsets never pass the effects, see keel.streams.offsets),
the next owner of its partitions replays it.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from faust.worker import Worker

log = logging.getLogger(__name__)

EXIT_STATUS = 75  # EX_TEMPFAIL: stopped, but not gracefully


def exit_after(seconds: float) -> threading.Timer:
    """Start a timer that ends the process after `seconds` (a daemon: it never delays an exit
    that happens in time)."""

    def hard_exit() -> None:
        log.error("still stopping after %.0f s (brokers unreachable?): exiting now", seconds)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(EXIT_STATUS)

    timer = threading.Timer(seconds, hard_exit)
    timer.daemon = True
    timer.start()
    return timer


class BoundedWorker(Worker):
    """Faust's worker, whose stop on SIGTERM or SIGINT is bounded by `shutdown_timeout`."""

    def __init__(self, *args: Any, shutdown_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shutdown_timeout = shutdown_timeout
        self._deadline: threading.Timer | None = None

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = exit_after(self.shutdown_timeout)

    def _on_sigterm(self) -> None:
        self._arm()
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._arm()
        super()._on_sigint()
