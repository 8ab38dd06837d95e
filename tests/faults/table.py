"""The fault suite's results as a Markdown table, from the JSON lines its tests append to
$FAULTS_RESULTS:

    FAULTS_RESULTS=/tmp/faults.jsonl make faults
    .venv/bin/python -m tests.faults.table /tmp/faults.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = ("scenario", "repetitions", "acknowledged", "lost", "duplicated", "refused_503")
HEADER = (
    "| scenario | repetitions | acknowledged | lost | duplicated | 503s | Keel commit | notes |"
)


def render(lines: list[str]) -> str:
    rows = sorted((json.loads(line) for line in lines if line.strip()), key=_order)
    out = [HEADER, "|---|---:|---:|---:|---:|---:|---|---|"]
    for row in rows:
        cells = [str(row[c]) for c in COLUMNS] + [f"`{row['commit']}`", row.get("note", "")]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _order(row: dict[str, object]) -> tuple[int, str]:
    head = str(row["scenario"]).split(".", 1)[0]
    return (int(head) if head.isdigit() else 99, str(row.get("at", "")))


if __name__ == "__main__":
    print(render(Path(sys.argv[1]).read_text().splitlines()))
