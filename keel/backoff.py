"""A capped exponential backoff with jitter, for loops that retry an outside system
(PostgreSQL, Kafka) until it answers again."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, cap: float, first: float = 0.2) -> None:
        self.cap, self.first, self.delay = cap, first, 0.0

    def next(self) -> float:
        """The next pause: doubled from `first` up to `cap`, give or take a fifth."""
        self.delay = min(self.cap, max(self.first, self.delay * 2))
        return self.delay * random.uniform(0.8, 1.2)  # replicas do not retry in lockstep

    def reset(self) -> None:
        """After a success: the next failure starts from `first` again."""
        self.delay = 0.0
