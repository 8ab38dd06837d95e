"""`keel lag` of a real stream app (issue 17): two Faust workers hold the app's changelog
partitions (their own tables' and standbys) and never commit them; the app's lag is the lag
of its source topics alone, and the changelogs are shown apart."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from keel.lag import group_lag
from tests.polling import wait_for
from tests.processes import KEEL
from tests.streams.conftest import StreamsEnv
from tests.streams.test_failover import make_events


def test_a_stream_apps_lag_is_its_sources_not_its_changelogs(
    streams_env: StreamsEnv, admin: Any
) -> None:
    app_id = streams_env.env["KEEL_STREAMS_APP_ID"]
    streams_env.start_worker()
    streams_env.start_worker()  # two workers: each holds standbys of the other's tables
    streams_env.send(make_events(300))

    def drained() -> Any:
        report = group_lag(admin, app_id)
        roles = {h.role for h in report.held}
        sources = {p.topic for p in report.partitions}
        filled = sum(h.end for h in report.held if h.topic.endswith("-changelog"))
        done = (
            report.members == 2
            and streams_env.source in sources
            and report.total == 0
            and {"active", "standby"} <= roles
            and filled > 0
        )
        return report if done else None

    report = wait_for(drained, 120, "the app drained, with tables written and standbys held")
    # What made the old figure wrong: the changelogs hold records the group never commits.
    assert not any(p.topic.endswith("-changelog") for p in report.partitions)
    assert all(h.topic.startswith(f"{app_id}-") for h in report.held)

    env = {**os.environ, **streams_env.env}
    shown = subprocess.run(
        [KEEL, "lag", app_id, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    found = json.loads(shown.stdout)
    assert found["lag"] == 0 and found["lag_seconds"] == 0.0, found
    assert {h["role"] for h in found["held"]} >= {"active", "standby"}
