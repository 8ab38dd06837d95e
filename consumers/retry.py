"""Retry scheduling as pure functions: the ladder of delays with jitter, the decision for a
failed job (retry when, or dead letters why), the headers that carry a job's history
through the retry and dead-letter topics, and the queue where a retry read before it is
due waits (`DelayQueue`, not blocking other jobs). Tested on plain values, without a broker."""

from __future__ import annotations

import heapq
import itertools
import random
import re
from collections.abc import Callable, Hashable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from keel.consumers.errors import JobConfigError

# The dead-letter header contract is the core's (shared with stream processors); the last
# error, the reason (permanent | retries_exhausted | undecodable) and the job's origin.
from keel.deadletters import (  # noqa: F401  (re-exported: the job headers in one place)
    H_ERROR,
    H_ERROR_CLASS,
    H_ORIG_OFFSET,
    H_ORIG_PARTITION,
    H_ORIG_TIMESTAMP,
    H_ORIG_TOPIC,
    H_REASON,
    MAX_ERROR_BYTES,
    Failure,
    HeaderList,
    Origin,
    error_headers,
    header_map,
    letter_headers,
    origin_headers,
)

# Headers on retry and dead-letter messages (values are UTF-8 strings).
H_JOB_TYPE = "keel.job.type"
H_ATTEMPT = "keel.job.attempt"  # attempts made so far (1 after the first failure)
H_DUE_AT = "keel.job.due_at_ms"  # when a retry becomes due (epoch milliseconds)
H_FAILED_AT = "keel.failed_at_ms"

REASON_PERMANENT = "permanent"
REASON_EXHAUSTED = "retries_exhausted"
REASON_UNDECODABLE = "undecodable"


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}
_STEP = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|)\s*$")


def parse_ladder(text: str) -> tuple[float, ...]:
    """`"10s,1m,10m"` -> (10.0, 60.0, 600.0). Bare numbers are seconds; empty means no retry."""
    if not text.strip():
        return ()
    steps = []
    for part in text.split(","):
        match = _STEP.match(part)
        if not match:
            raise JobConfigError(
                f"bad retry ladder step {part.strip()!r} in {text!r}: use e.g. 10s, 1m, 10m, 500ms"
            )
        steps.append(float(match.group(1)) * _UNITS[match.group(2)])
    return tuple(steps)


@dataclass(frozen=True)
class RetryDecision:
    """What to do with a failed job: retry at `due_at_ms`, or dead-letter with `reason`."""

    attempt: int  # attempts made, including the one that just failed
    retry: bool
    due_at_ms: int = 0
    reason: str = ""


@dataclass(frozen=True)
class RetryPolicy:
    """A ladder of delays (one per retry) with symmetric jitter (a share of each delay)."""

    ladder: tuple[float, ...] = (10.0, 60.0, 600.0)
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if any(step < 0 for step in self.ladder):
            raise JobConfigError(f"retry delays must not be negative: {self.ladder}")
        if not 0 <= self.jitter <= 1:
            raise JobConfigError(f"retry jitter must be between 0 and 1, got {self.jitter}")

    @classmethod
    def from_text(cls, ladder: str, jitter: float) -> RetryPolicy:
        return cls(parse_ladder(ladder), jitter)

    @property
    def max_attempts(self) -> int:
        return len(self.ladder) + 1

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based), with jitter."""
        base = self.ladder[attempt - 1]
        return max(0.0, base * (1 + self.jitter * (2 * rand() - 1)))

    def decide(
        self,
        attempt: int,
        retriable: bool,
        now_ms: int,
        rand: Callable[[], float] = random.random,
    ) -> RetryDecision:
        """The fate of a job whose attempt number `attempt` just failed."""
        if not retriable:
            return RetryDecision(attempt, retry=False, reason=REASON_PERMANENT)
        if attempt >= self.max_attempts:
            return RetryDecision(attempt, retry=False, reason=REASON_EXHAUSTED)
        due = now_ms + round(self.delay(attempt, rand) * 1000)
        return RetryDecision(attempt, retry=True, due_at_ms=due)


def attempts_of(headers: Mapping[str, str]) -> int:
    """Attempts already made for a message (0 for a fresh job)."""
    try:
        return max(0, int(headers.get(H_ATTEMPT, "0")))
    except ValueError:
        return 0


def due_at_of(headers: Mapping[str, str]) -> int:
    try:
        return int(headers.get(H_DUE_AT, "0"))
    except ValueError:
        return 0


def retry_headers(
    job_type: str, decision: RetryDecision, origin: Origin, error: BaseException, now_ms: int
) -> HeaderList:
    return [
        (H_JOB_TYPE, job_type),
        (H_ATTEMPT, str(decision.attempt)),
        (H_DUE_AT, str(decision.due_at_ms)),
        *error_headers(Failure.of(error)),
        *origin_headers(origin),
        (H_FAILED_AT, str(now_ms)),
    ]


def dead_letter_headers(
    job_type: str,
    attempt: int,
    reason: str,
    origin: Origin,
    error: BaseException | Failure,
    *,
    now_ms: int,
) -> HeaderList:
    extra = [(H_JOB_TYPE, job_type), (H_ATTEMPT, str(attempt)), (H_FAILED_AT, str(now_ms))]
    failure = error if isinstance(error, Failure) else Failure.of(error)
    return letter_headers(reason, failure, origin, extra)


class DelayQueue:
    """Items ordered by due time (epoch ms); ties keep insertion order."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Hashable, Any]] = []
        self._seq = itertools.count()

    def push(self, due_ms: int, item: Any, group: Hashable = None) -> None:
        heapq.heappush(self._heap, (due_ms, next(self._seq), group, item))

    def pop_due(self, now_ms: int) -> list[Any]:
        out = []
        while self._heap and self._heap[0][0] <= now_ms:
            out.append(heapq.heappop(self._heap)[3])
        return out

    def next_due(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def drop_groups(self, groups: AbstractSet[Hashable] | None = None) -> list[Any]:
        """Remove and return the items of some groups (e.g. revoked partitions), or all."""
        if groups is None:
            dropped = [item[3] for item in self._heap]
            self._heap.clear()
            return dropped
        dropped = [item[3] for item in self._heap if item[2] in groups]
        self._heap = [item for item in self._heap if item[2] not in groups]
        heapq.heapify(self._heap)
        return dropped

    def __len__(self) -> int:
        return len(self._heap)
