"""Dead-letter replay through real `keel streams worker` processes: a processor raises on one
event, the cause is fixed and the worker restarted, `keel.deadletters.replay` sends the
letter back, and every processor has counted the event exactly once (the one that raised
only on the replay, within the dedup window of the event's first delivery). Replaying the
letter again (another replay group), even after another worker took the partition over,
changes nothing; a replay that raised again leaves the letter replayable."""

from __future__ import annotations

import os
import re
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from keel.deadletters import H_PROCESSOR, read, replay
from keel.settings import KeelSettings
from tests.polling import wait_for
from tests.streams.conftest import StreamsEnv, Worker

# A processor the workers load beside the real ones: the test's own module, put on the
# path of `keel.streams.processors` by a sitecustomize (the worker discovers every module on it).
# It raises on one path while the file `broken` exists: deleting it is the fix.
FLAKY = """
from pathlib import Path

from keel.streams.processor import View

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
import keel.streams.processors

keel.streams.processors.__path__.append({processors!r})
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


def flaky_deployment(streams_env: StreamsEnv, tmp_path: Path) -> tuple[dict[str, str], Path]:
    """The workers' environment with the flaky processor, and the file whose removal fixes it."""
    site, processors = tmp_path / "site", tmp_path / "processors"
    site.mkdir()
    processors.mkdir()
    broken = tmp_path / "broken"
    broken.touch()
    (processors / "flaky.py").write_text(FLAKY.format(broken=str(broken)))
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(processors=str(processors)))
    path = os.pathsep.join(p for p in (str(site), streams_env.env.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "KEEL_STREAMS_PROCESSORS": "flaky,user_activity"}, broken


def views_of(streams_env: StreamsEnv) -> tuple[Any, Any]:
    """u1's flaky and user_activity views (None while not answered)."""
    flaky, activity = streams_env.view("flaky", "u1"), streams_env.view("user_activity", "u1")
    return (
        flaky[1] if flaky[0] == 200 else None,
        activity[1] if activity[0] == 200 else None,
    )


def duplicates(worker: Worker) -> float:
    with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(r"^keel_streams_duplicates_total (\S+)$", text, re.MULTILINE)
    assert found, text[:2000]
    return float(found.group(1))


def test_a_replayed_processor_letter_is_counted_once_by_every_processor(
    streams_env: StreamsEnv, tmp_path: Path
) -> None:
    env, broken = flaky_deployment(streams_env, tmp_path)

    def views() -> tuple[Any, Any]:
        return views_of(streams_env)

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


def test_a_letter_replayed_again_changes_the_views_once(
    streams_env: StreamsEnv, tmp_path: Path
) -> None:
    env, broken = flaky_deployment(streams_env, tmp_path)
    settings = KeelSettings(bootstrap_servers=streams_env.env["KEEL_BOOTSTRAP_SERVERS"])
    worker = streams_env.start_worker(**env)
    boom = page("u1", "/boom")
    streams_env.send([page("u1"), boom])
    [first] = wait_for(lambda: read(settings, streams_env.dlq), 60, "the first dead letter")

    # Replayed before the fix: flaky raises again, and the replay becomes a new letter.
    assert [x.address for x in replay(settings, streams_env.dlq)] == [first.address]
    letters = wait_for(
        lambda: (found := read(settings, streams_env.dlq)) and len(found) == 2 and found,
        60,
        "the letter of the replay that raised again",
    )
    second = letters[1]
    assert (second.reason, second.headers[H_PROCESSOR]) == ("processor", "flaky")

    broken.unlink()
    worker.stop()
    worker = streams_env.start_worker(**env)
    # Another replay group: the first letter, replayable although its replay raised, counts
    # now; the second is a letter of the same event for flaky, skipped.
    again = replay(settings, streams_env.dlq, group=f"other-{uuid.uuid4().hex[:8]}")
    assert [x.address for x in again] == [first.address, second.address]
    mid = page("u1")
    streams_env.send([mid])

    def counted(event: dict[str, Any]) -> Any:
        flaky, activity = views_of(streams_env)
        return flaky and activity and event["event_id"] in flaky["event_ids"] and (flaky, activity)

    flaky, _ = wait_for(lambda: counted(mid), 60, "the event after the second replay in flaky")
    assert flaky["event_ids"].count(boom["event_id"]) == 1 and flaky["events"] == 3

    # Another worker takes the partition over (its dedup index from the changelog) and both
    # letters are replayed once more, and the second once more by the default group.
    worker.stop()
    worker = streams_env.start_worker(**env)
    assert len(replay(settings, streams_env.dlq, group=f"third-{uuid.uuid4().hex[:8]}")) == 2
    assert [x.address for x in replay(settings, streams_env.dlq)] == [second.address]
    last = page("u1")
    streams_env.send([last])
    flaky, activity = wait_for(lambda: counted(last), 60, "the last event in flaky")
    assert flaky["event_ids"].count(boom["event_id"]) == 1 and flaky["events"] == 4
    assert activity["events"] == 4  # page, boom, mid, last: no replay reached user_activity
    assert duplicates(worker) >= 3  # the three replays this worker skipped
    assert len(read(settings, streams_env.dlq)) == 2  # none of them failed
