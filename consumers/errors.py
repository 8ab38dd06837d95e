"""Errors of the job workers. Every job failure says whether a retry may succeed, and the
worker asks that flag (`retriable`) instead of listing classes."""

from __future__ import annotations

from keel.errors import KeelError


class JobError(KeelError):
    """A job failed. `retriable` decides between the retry ladder and dead letters."""

    retriable: bool = True
    reason: str = "error"

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class RetriableJobError(JobError):
    """Worth trying again later (a server that refuses for now, a timeout, a lost connection)."""

    retriable = True
    reason = "retriable"


class PermanentJobError(JobError):
    """Will never succeed as it is (bad data, unknown template, a 5xx answer): dead letters."""

    retriable = False
    reason = "permanent"


class UndecodableJob(PermanentJobError):
    """The job's bytes cannot be decoded into a job record."""

    reason = "undecodable"


class JobConfigError(KeelError):
    """The worker is configured wrongly (an unknown job type, a bad retry ladder)."""


class StoreError(KeelError):
    """The idempotency store cannot be reached or answered an error (retriable)."""


def is_retriable(exc: BaseException) -> bool:
    """Whether a failure is worth retrying. JobErrors (and errors carrying a `retriable` flag,
    like KafkaEdgeError) say so; anything else is unknown, so it walks the retry ladder and
    lands in dead letters only when the ladder is exhausted: a transient fault is not lost,
    and a bug costs a few attempts."""
    flag = getattr(exc, "retriable", None)
    return True if flag is None else bool(flag)
