"""`keel broker up|down|status`: a real Apache Kafka 4 on this host, from its jars."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

import typer

from keel.acls import DEFAULT_FILE as ACLS_FILE
from keel.acls import load_acls
from keel.command_group import command_group
from keel.local.security import ADMIN
from keel.local.services import local_kafka
from keel.settings import get_settings

OPS = "keel-ops"
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
    secure: bool = typer.Option(
        False,
        "--secure",
        help="SASL_SSL (SCRAM-SHA-512) with TLS from a local CA, ACLs enforced; one SCRAM "
        "user per principal of the ACL file.",
    ),
    acls: Annotated[
        Path,
        typer.Option("--acls", help="The ACL file whose principals get SCRAM users (--secure)."),
    ] = ACLS_FILE,
) -> None:
    """Fetch Kafka's jars (first time), start the broker(s), wait until a topic can be created.
    With --secure, print the KEEL_* settings that connect as the `keel-ops` principal."""
    principals = tuple(load_acls(acls).names()) if secure and acls.exists() else ()
    cluster = local_kafka(get_settings(), brokers, port, secure=secure, principals=principals)
    bootstrap = cluster.up(_progress)
    if secure:
        who = OPS if OPS in principals else ADMIN
        settings = cluster.client_settings(who)
        _progress(f"connect as {who} (passwords stay in their files, mode 0600):")
        for name, value in settings.items():
            _progress(f"  export KEEL_{name.upper()}={value}")
    typer.echo(bootstrap)


@broker_app.command(
    "rotate", short_help="Give a principal of the secured local cluster a new password."
)
def rotate(
    principal: str = typer.Argument(help="The SASL user whose password is replaced."),
) -> None:
    """Give a principal of the secured local cluster a new random password: the brokers take
    it at once (connections already open stay), and its password file is rewritten, so each
    process reading KEEL_SASL_PASSWORD_FILE takes it on its next start."""
    cluster = local_kafka(get_settings(), secure=True)
    cluster.set_password(principal, secrets.token_urlsafe(24))
    _progress(f"new password of {principal} in {cluster.security.password_file(principal)}")


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
