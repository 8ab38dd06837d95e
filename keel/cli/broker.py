"""`keel broker up|down|status`: a real Apache Kafka 4 on this host, from its jars."""

from __future__ import annotations

import typer

from keel.command_group import command_group
from keel.local.services import local_kafka
from keel.settings import get_settings

broker_app = command_group("broker", "Run a real Apache Kafka (KRaft) on this host.")


def _progress(message: str) -> None:
    typer.echo(message, err=True)


@broker_app.command("up")
def up(
    brokers: int = typer.Option(
        1, "--brokers", "-b", help="1, or 3 for a replicated cluster (RF 3, min ISR 2)."
    ),
    port: int | None = typer.Option(
        None, "--port", help="Client port of broker 1 [default: KEEL_BROKER_PORT]."
    ),
) -> None:
    """Fetch Kafka's jars (first time), start the broker(s), wait until a topic can be created."""
    cluster = local_kafka(get_settings(), brokers, port)
    bootstrap = cluster.up(_progress)
    typer.echo(bootstrap)


@broker_app.command("down")
def down() -> None:
    """Stop the local broker(s); their data stays for the next `up`."""
    if not local_kafka(get_settings()).down(_progress):
        _progress("no Kafka broker was running")


@broker_app.command("status")
def status() -> None:
    """Show each broker node, its port, pid and log; exit 1 if none runs."""
    nodes = local_kafka(get_settings()).status()
    for node in nodes:
        state = f"running pid {node.pid}" if node.pid else "stopped"
        typer.echo(f"broker {node.node_id}  127.0.0.1:{node.port}  {state}  log {node.log_file}")
    if not any(n.pid for n in nodes):
        raise typer.Exit(1)
