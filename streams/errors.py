"""The errors of the stream processors, all under `keel.errors.KeelError`."""

from __future__ import annotations

from keel.errors import KeelError


class StreamsError(KeelError):
    """Root of the errors raised by `streams`."""


class ProcessorError(StreamsError):
    """A processor is badly defined (name clash, unknown kind, bad module)."""


class PoisonMessage(StreamsError):
    """A message that cannot be processed; it goes to the dead-letter topic.

    `reason` is a short machine-readable kind (`undecodable`, `processor`), `error` the text.
    """

    def __init__(self, reason: str, error: str) -> None:
        super().__init__(f"{reason}: {error}")
        self.reason = reason
        self.error = error


class BadQuery(StreamsError):
    """A query parameter is invalid (e.g. a window that is not an ISO hour)."""
