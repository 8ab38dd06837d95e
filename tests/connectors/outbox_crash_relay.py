"""A relay that dies by SIGKILL right after the broker acknowledged its batch and before the
claiming transaction commits (the worst moment for a crash). Settings come from KEEL_*.
Prints the published row ids and event_ids as one JSON line first, so the test knows what
was on Kafka when it died."""

from __future__ import annotations

import json
import os
import signal
import sys

from keel.connectors.outbox import BatchResult, OutboxRelay


def die_before_commit(result: BatchResult) -> None:
    sys.stdout.write(json.dumps({str(k): v for k, v in result.published.items()}) + "\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    OutboxRelay(before_commit=die_before_commit).publish_batch()
    sys.exit(3)  # not reached: the hook kills the process
