"""Per-API-key rate limits: a token bucket of events per second, per worker process.

With N worker processes (reuse-port spreads connections evenly) each holds 1/N of the key's
rate, so the key's total stays near its configured rate without shared state."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TokenBucket:
    __slots__ = ("burst", "clock", "rate", "stamp", "tokens")

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.clock = clock
        self.stamp = clock()

    def take(self, n: int) -> float:
        """Take `n` tokens and return 0, or take none and return the seconds to wait."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if n <= self.tokens:
            self.tokens -= n
            return 0.0
        if n > self.burst:  # can never fit: wait for a full bucket, the client should split
            return math.inf
        return (n - self.tokens) / self.rate


class RateLimiter:
    def __init__(self, rate: float, burst: int, share: int = 1) -> None:
        self.rate = rate / max(share, 1)
        self.burst = max(1.0, burst / max(share, 1))
        self.share = max(share, 1)
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, key_id: str, n: int, rate: float | None = None) -> float:
        """0 when `key_id` may send `n` events now, else the seconds until it may."""
        bucket = self._buckets.get(key_id)
        if bucket is None:
            per_process = (rate / self.share) if rate else self.rate
            burst = max(self.burst, per_process) if rate else self.burst
            bucket = self._buckets[key_id] = TokenBucket(per_process, burst)
        return bucket.take(n)


def retry_after_header(seconds: float) -> str:
    """Retry-After takes whole seconds: round up, at least 1."""
    if math.isinf(seconds):
        return "60"
    return str(max(1, math.ceil(seconds)))
