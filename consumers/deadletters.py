"""A job type's dead letters: the core's reading and replaying (`keel.deadletters`) applied
to its topics. Replays go back to the job's source topic as fresh jobs."""

from __future__ import annotations

from keel.consumers.job import JobTopics
from keel.consumers.retry import H_ATTEMPT
from keel.deadletters import DeadLetter
from keel.deadletters import read as read_topic
from keel.deadletters import replay as replay_topic
from keel.settings import KeelSettings


def attempts(letter: DeadLetter) -> int:
    """How many times the job ran before it was given up (0 when unknown)."""
    try:
        return int(letter.headers.get(H_ATTEMPT, "0"))
    except ValueError:
        return 0


def read(settings: KeelSettings, topics: JobTopics, timeout: float = 10.0) -> list[DeadLetter]:
    """The dead letters in the job's dead-letter topic now, oldest first per partition."""
    return read_topic(settings, topics.dlq, timeout)


def replay(
    settings: KeelSettings, topics: JobTopics, group: str, timeout: float = 10.0
) -> list[DeadLetter]:
    """Send the dead letters not replayed yet back to the source topic; return them."""
    return replay_topic(settings, topics.dlq, to=topics.source, group=group, timeout=timeout)
