"""`keel up`, `keel status`, `keel down`: the whole local stack."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import typer

from keel.local.stack import stack_services, start_all, statuses, stop_all
from keel.settings import get_settings


def _progress(message: str) -> None:
    typer.echo(message, err=True)


def _print_status() -> bool:
    ok = True
    for st in statuses(stack_services(get_settings())):
        mark = "healthy" if st.healthy else ("running, not healthy" if st.running else "stopped")
        ok = ok and st.healthy
        typer.echo(f"{st.name:<12} {mark:<22} {st.detail}")
    return ok


def up(
    detach: bool = typer.Option(
        False, "--detach", "-d", help="Start in the background and return."
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
    reported: set[str] = set()
    while not stop_event.wait(5.0):
        for st in statuses(services):
            if not st.running and st.name not in reported:
                _progress(
                    f"warning: {st.name} stopped unexpectedly; see its log under {get_settings().home / 'logs'}"
                )
                reported.add(st.name)
    _progress("stopping ...")
    stop_all(started, _progress)


def down() -> None:
    """Stop every service of the local stack (whoever started it)."""
    stop_all(stack_services(get_settings()), _progress)


def status() -> None:
    """Show each service of the local stack; exit 1 unless all are healthy."""
    if not _print_status():
        raise typer.Exit(1)


def register_stack_commands(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)
