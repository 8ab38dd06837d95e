"""Dead-letter replay through real `keel streams worker` processes: a processor raises on one
event, the cause is fixed and the worker restarted, `keel.deadletters.replay` sends the
letter back, and every processor has counted the event exactly once (the one that raised
only on the replay, within the dedup window of the event's first delivery)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from keel.deadletters import H_PROCESSOR, read, replay
from keel.settings import KeelSettings
from tests.polling import wait_for
from tests.streams.conftest import StreamsEnv

# A processor the workers load beside the real ones: the test's own module, put on the
# path of `streams.processors` by a sitecustomize (the worker discovers every module on it).
# It raises on one path while the file `broken` exists: deleting it is the fix.
FLAKY = """
from pathlib import Path

from streams.processor import View

BROKEN = Path({broken!r})


class Flaky(View):
    name = "flaky"

    def initial(self):
        return {{"events": 0, "event_ids": []}}

    def apply(self, state, event):
        if event.get("path") == "/boom" and BROKEN.exists():
            raise RuntimeError("flaky on purpose")
        state["events"] += 1
        state["event_ids"].append(event.event_id)
        return state


processor = Flaky()
"""

SITECUSTOMIZE = """
import streams.processors

streams.processors.__path__.append({processors!r})
"""


def page(user: str, path: str = "/") -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "page.viewed",
        "user_id": user,
        "occurred_at": "2026-11-28T08:00:00Z",
        "url": f"https://shop.example{path}",
        "path": path,
        "title": None,
        "referrer": None,
    }


def test_a_replayed_processor_letter_is_counted_once_by_every_processor(
    streams_env: StreamsEnv, tmp_path: Path
) -> None:
    site, processors = tmp_path / "site", tmp_path / "processors"
    site.mkdir()
    processors.mkdir()
    broken = tmp_path / "broken"
    broken.touch()
    (processors / "flaky.py").write_text(FLAKY.format(broken=str(broken)))
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(processors=str(processors)))
    path = os.pathsep.join(p for p in (str(site), streams_env.env.get("PYTHONPATH")) if p)
    env = {"PYTHONPATH": path, "KEEL_STREAMS_PROCESSORS": "flaky,user_activity"}

    def views() -> tuple[Any, Any]:
        flaky, activity = streams_env.view("flaky", "u1"), streams_env.view("user_activity", "u1")
        return (
            flaky[1] if flaky[0] == 200 else None,
            activity[1] if activity[0] == 200 else None,
        )

    worker = streams_env.start_worker(**env)
    first, boom, third = page("u1"), page("u1", "/boom"), page("u1")
    streams_env.send([first, boom, third])
    settings = KeelSettings(bootstrap_servers=streams_env.env["KEEL_BOOTSTRAP_SERVERS"])

    def counted_but_by_flaky() -> Any:
        flaky, activity = views()
        return flaky and activity and flaky["events"] == 2 and activity["events"] == 3

    wait_for(counted_but_by_flaky, 60, "3 events in user_activity, 2 in flaky")
    [letter] = wait_for(lambda: read(settings, streams_env.dlq), 30, "the dead letter")
    assert (letter.reason, letter.headers[H_PROCESSOR]) == ("processor", "flaky")
    assert "flaky on purpose" in letter.error

    # The fix: deployed by restarting the worker without the failure.
    broken.unlink()
    worker.stop()
    streams_env.start_worker(**env)
    [replayed] = replay(settings, streams_env.dlq)
    assert replayed.address == letter.address
    last = page("u1")  # after the replay in u1's partition: once counted, the replay was handled
    streams_env.send([last])

    def all_counted() -> Any:
        flaky, activity = views()
        return flaky and activity and last["event_id"] in flaky["event_ids"] and (flaky, activity)

    flaky, activity = wait_for(all_counted, 60, "the event after the replay in flaky")
    sent = [first, boom, third, last]
    assert sorted(flaky["event_ids"]) == sorted(e["event_id"] for e in sent)  # boom once
    assert flaky["events"] == 4
    assert activity["events"] == 4 and activity["counts"] == {"page.viewed": 4}
    assert len(read(settings, streams_env.dlq)) == 1  # the replay did not fail again
