"""`keel up`, `keel status`, `keel down`: the whole local stack."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from dataclasses import asdict
from importlib.metadata import entry_points
from pathlib import Path
from types import FrameType

import typer

from keel.local.stack import stack_services, start_all, statuses, stop_all, stop_stack
from keel.settings import get_settings


def _progress(message: str) -> None:
    typer.echo(message, err=True)


def _print_status(as_json: bool = False) -> bool:
    """A line per service (or one JSON document): a Keel process is healthy when its
    /healthz answers and its /readyz says ok; one that is not ready names its failing checks."""
    found = statuses(stack_services(get_settings()))
    if as_json:
        typer.echo(json.dumps([asdict(st) | {"ready": st.ready} for st in found], indent=2))
        return all(st.ready for st in found)
    for st in found:
        if st.ready:
            mark = "healthy"
        elif st.healthy:
            mark = "running, not ready"
        else:
            mark = "running, not healthy" if st.running else "stopped"
        detail = st.detail
        if st.healthy and not st.ready:
            detail += f" (failing: {', '.join(st.unready_checks()) or '?'})"
        typer.echo(f"{st.name:<12} {mark:<22} {detail}")
    return all(st.ready for st in found)


def up(
    detach: bool = typer.Option(
        False, "--detach", "-d", help="Start in the background and return."
    ),
    demo: float = typer.Option(
        0.0,
        "--demo",
        help="Also send demo traffic at this many events/s (`keel demo`) until Ctrl-C.",
    ),
) -> None:
    """Start every service of the local stack; without --detach, run until Ctrl-C, then stop
    what this command started."""
    services = stack_services(get_settings())
    started = start_all(services, _progress)
    _print_status()
    if detach:
        _progress("stack running in the background; `keel status` shows it, `keel down` stops it")
        return
    stop_event = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop_event.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    _progress("stack running; press Ctrl-C to stop it")
    demo_run = _start_demo(demo, get_settings().home / "logs") if demo > 0 else None
    reported: set[str] = set()
    while not stop_event.wait(5.0):
        if demo_run is not None and (failure := demo_failure(*demo_run)):
            _progress(failure)
            demo_run = None
        for st in statuses(services):
            if not st.running and st.name not in reported:
                _progress(
                    f"warning: {st.name} stopped unexpectedly; see its log under {get_settings().home / 'logs'}"
                )
                reported.add(st.name)
    if demo_run is not None:
        demo_run[0].terminate()
        demo_run[0].wait(10)
    _progress("stopping ...")
    stop_all(started, _progress)


def _start_demo(rate: float, logs: Path) -> tuple[subprocess.Popen[bytes], Path] | None:
    """`keel demo` as a child process, its output in `logs`/demo.log: the core runs a
    component's command, never imports it. Whether it is installed is read from the entry
    points (no probe process: one that imports every component can fail for reasons of its
    own, and its error was thrown away)."""
    if not any(e.name == "demo" for e in entry_points(group="keel.commands")):
        _progress(
            "warning: no `keel demo` command is installed (entry point keel.commands demo); "
            "running without demo traffic"
        )
        return None
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / "demo.log"
    _progress(f"sending demo traffic at {rate:g} events/s (keel demo; log: {log})")
    with log.open("ab") as out:
        argv = [sys.executable, "-m", "keel.cli", "demo", "--rate", str(rate)]
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT), log


def demo_failure(process: subprocess.Popen[bytes], log: Path) -> str | None:
    """A warning with the demo's own last lines once it has exited with an error."""
    code = process.poll()
    if code is None or code == 0:
        return None
    tail = log.read_text(errors="replace").splitlines()[-8:] if log.exists() else []
    return "\n".join([f"warning: keel demo exited with status {code}; last lines of {log}:", *tail])


def down() -> None:
    """Stop every service of the local stack (whoever started it, whatever the settings now)."""
    stop_stack(get_settings(), _progress)


def status(
    as_json: bool = typer.Option(
        False, "--json", help="Each service as JSON, with the /readyz body it answered."
    ),
) -> None:
    """Show each service of the local stack, Keel's processes as their /readyz says; exit 1
    unless all are healthy and ready."""
    if not _print_status(as_json):
        raise typer.Exit(1)


def register_stack_commands(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)
