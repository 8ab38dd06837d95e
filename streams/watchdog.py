"""Stalled-partition detection: pure, fed snapshots, no Kafka imports.

faust-streaming can leave a partition assigned to a worker but no longer fetched or
processed after a rebalance (faust-streaming/faust#629 and relatives): its lag grows while
the worker looks healthy. `StallDetector` is fed, every few seconds, each assigned source
partition's position (what the worker has processed) and highwater (the partition's end),
and names the partitions that had messages waiting without their position moving for
`timeout` seconds. Time spent rebalancing or recovering does not count: the clock restarts
after it, since Faust does not process then by design.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Stall:
    """A stalled partition, as `/healthz` and the log name it."""

    topic: str
    partition: int
    position: int
    highwater: int
    seconds: float

    def as_dict(self) -> dict[str, object]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "position": self.position,
            "highwater": self.highwater,
            "stuck_s": round(self.seconds, 1),
        }


@dataclass
class _Track:
    position: int
    since: float  # when the position last moved, or the clock last restarted
    waiting: bool  # messages were waiting at the last snapshot
    reported: bool = False


class StallDetector:
    """Feed `observe` snapshots; it returns the partitions stalled now."""

    def __init__(self, timeout: float) -> None:
        if timeout < 0:
            raise ValueError(f"stall timeout must be >= 0 seconds, got {timeout}")
        self.timeout = timeout
        self._tracks: dict[tuple[str, int], _Track] = {}

    @property
    def enabled(self) -> bool:
        return self.timeout > 0

    def observe(
        self,
        now: float,
        offsets: Mapping[tuple[str, int], tuple[int, int]],
        *,
        paused: bool = False,
    ) -> list[Stall]:
        """`offsets`: (topic, partition) -> (position, highwater) of every partition
        assigned now; `paused`: the app is rebalancing or recovering. Partitions absent
        from `offsets` are forgotten."""
        tracks = self._tracks
        for gone in tracks.keys() - offsets.keys():
            del tracks[gone]
        stalls: list[Stall] = []
        for tp, (position, highwater) in offsets.items():
            track = tracks.get(tp)
            waiting = highwater > position
            if (
                track is None
                or paused
                or not waiting
                or not track.waiting
                or position != track.position
            ):
                # New, moving, caught up, messages just arrived, or Faust is not processing
                # by design: the clock (re)starts now.
                tracks[tp] = _Track(position, now, waiting)
                continue
            stuck = now - track.since
            if self.enabled and stuck >= self.timeout:
                stalls.append(Stall(tp[0], tp[1], position, highwater, stuck))
        return stalls

    def newly_reported(self, stalls: list[Stall]) -> list[Stall]:
        """The stalls not yet reported (one warning per stall), marking them reported."""
        fresh = []
        for stall in stalls:
            track = self._tracks[(stall.topic, stall.partition)]
            if not track.reported:
                track.reported = True
                fresh.append(stall)
        return fresh


__all__ = ["Stall", "StallDetector"]
