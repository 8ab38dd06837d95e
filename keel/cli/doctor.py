"""`keel doctor`: check Keel's durability promises against the cluster, line by line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from keel.doctor import run_checks
from keel.kafka import SILENT_LOG, make_admin
from keel.settings import get_settings
from keel.topics import DEFAULT_FILE, load_topics


def doctor(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object: {ok, checks: [...]}.")
    ] = False,
    file: Annotated[
        Path,
        typer.Option(
            "--file",
            "-f",
            help="The topics file whose topics count as Keel's too (if present).",
            dir_okay=False,
        ),
    ] = DEFAULT_FILE,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for each answer.", min=0.5)
    ] = 15.0,
) -> None:
    """Check what Keel promises about durability, on any cluster (local or managed): brokers
    and controller answer; unclean leader election and topic auto-creation are off; every Keel
    topic and __consumer_offsets keeps enough replicas with min.insync.replicas below them
    (the rules of `keel topics plan`), in sync now; each Keel consumer group has members; the
    registry answers and agrees with the catalog. One line per check (ok / FAIL, and the fix);
    exit status 0 when every check holds, 1 otherwise."""
    settings = get_settings()
    declared = [t.name for t in load_topics(file).topics] if file.exists() else []
    admin = make_admin(settings, logger=SILENT_LOG)
    checks = run_checks(admin, settings, declared, timeout)
    ok = all(c.ok for c in checks)
    if as_json:
        typer.echo(json.dumps({"ok": ok, "checks": [c.to_dict() for c in checks]}))
    else:
        for check in checks:
            typer.echo(check.line())
        failed = sum(not c.ok for c in checks)
        typer.echo("every check holds" if ok else f"{failed} of {len(checks)} checks fail")
    if not ok:
        raise typer.Exit(1)
