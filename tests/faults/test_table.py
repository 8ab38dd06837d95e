"""The results table of the fault suite, from the rows its tests record."""

from __future__ import annotations

import json

from tests.faults.table import render


def _row(scenario: str, lost: int = 0) -> str:
    return json.dumps({
        "scenario": scenario, "repetitions": 2, "acknowledged": 900, "lost": lost,
        "duplicated": 0, "refused_503": 7, "note": "n", "commit": "abc123", "at": "2026-12-03T08:00Z",
    })  # fmt: skip


def test_rows_in_scenario_order_with_their_commit() -> None:
    table = render([_row("10. soak"), "", _row("2. two down", lost=1), _row("1. leader")])
    lines = table.splitlines()
    assert lines[0].startswith("| scenario | repetitions | acknowledged | lost | duplicated | 503s")
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| 1. leader",
        "| 2. two down",
        "| 10. soak",
    ]
    assert lines[3] == "| 2. two down | 2 | 900 | 1 | 0 | 7 | `abc123` | n |"
