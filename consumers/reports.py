"""Report jobs' building blocks: read a materialized view from the streams query API, turn it
into a table, write it as CSV and as a PNG chart (matplotlib), and keep both in the report
store (a folder: `<root>/<user_id>/<report_id>/`), written atomically so a reader never sees
half a report and a rebuilt report replaces the same folder."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from keel.consumers.errors import PermanentJobError, RetriableJobError

# Which view each report kind is built from, and what it is keyed by.
REPORT_KINDS: dict[str, str] = {"activity": "user_activity"}
FORMATS = ("csv", "png")


@dataclass(frozen=True)
class ReportTable:
    title: str
    columns: tuple[str, str]
    rows: list[tuple[str, float]]
    meta: dict[str, Any] = field(default_factory=dict)


def flatten_numbers(value: Any, prefix: str = "") -> list[tuple[str, float]]:
    """Numeric leaves of a JSON value as (dotted name, number), in document order; booleans
    and text are not figures."""
    rows: list[tuple[str, float]] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            rows += flatten_numbers(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            rows += flatten_numbers(item, f"{prefix}.{index}" if prefix else str(index))
    elif isinstance(value, int | float) and not isinstance(value, bool):
        rows.append((prefix or "value", float(value)))
    elif isinstance(value, str) and not prefix.lower().endswith("id"):
        with contextlib.suppress(ValueError):  # decimals (money) travel as strings
            rows.append((prefix or "value", float(value)))
    return rows


def build_table(
    kind: str, user_id: str, view: Mapping[str, Any], period: tuple[datetime, datetime]
) -> ReportTable:
    rows = flatten_numbers(view)
    if not rows:
        raise PermanentJobError(f"the {kind} view of user {user_id!r} has no figures to report")
    return ReportTable(
        title=f"{kind} report for {user_id}",
        columns=("metric", "value"),
        rows=rows,
        meta={
            "kind": kind,
            "user_id": user_id,
            "period_start": period[0].isoformat(),
            "period_end": period[1].isoformat(),
        },
    )


def write_csv(table: ReportTable, path: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(table.columns)
        for name, number in table.rows:
            writer.writerow((name, f"{number:g}"))


def write_png(table: ReportTable, path: Path) -> None:
    # The object API with the Agg canvas, not pyplot: no global state, safe in threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [name for name, _ in table.rows]
    values = [number for _, number in table.rows]
    fig = Figure(figsize=(8, max(2.5, 0.35 * len(names) + 1.2)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.barh(names[::-1], values[::-1], color="#2f6690")
    ax.set_title(table.title)
    ax.set_xlabel(table.columns[1])
    fig.tight_layout()
    fig.savefig(str(path), format="png")


class ReportStore:
    """A folder per report. `save` writes into a temporary folder and renames it into place."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def location(self, user_id: str, report_id: str) -> Path:
        safe_user = urllib.parse.quote(user_id, safe="")
        return self.root / safe_user / report_id

    def save(self, user_id: str, report_id: str, table: ReportTable) -> Path:
        final = self.location(user_id, report_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{report_id}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        try:
            write_csv(table, tmp / "report.csv")
            write_png(table, tmp / "report.png")
            (tmp / "meta.json").write_text(
                json.dumps(
                    {**table.meta, "report_id": report_id, "formats": list(FORMATS)}, indent=2
                )
            )
            if final.exists():  # a rebuilt report (a redelivered job) replaces the old one
                old = final.parent / f".{report_id}.{uuid.uuid4().hex[:8]}.old"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final


class ViewsClient:
    """`GET <base>/v1/views/<view>/<key>` on the streams query API, with `api_key` (scope
    views, KEEL_VIEWS_API_KEY) when given."""

    def __init__(self, base_url: str, timeout: float = 10.0, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def get(self, view: str, key: str) -> dict[str, Any] | None:
        url = f"{self.base_url}/v1/views/{urllib.parse.quote(view)}/{urllib.parse.quote(key, safe='')}"
        try:
            request = urllib.request.Request(url, headers=self.headers)
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            if exc.code >= 500 or exc.code == 429:
                raise RetriableJobError(f"views API {url} answered {exc.code}") from exc
            raise PermanentJobError(f"views API {url} answered {exc.code}") from exc
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise RetriableJobError(f"views API {url} unreachable: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise RetriableJobError(f"views API {url} sent invalid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise PermanentJobError(f"views API {url} sent {type(body).__name__}, not an object")
        value = body.get("value", body)
        return value if isinstance(value, dict) else {"value": value}
