"""`keel registry` (serve the schema registry) and `keel schemas check|register|list`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from keel.command_group import command_group
from keel.logging import configure_logging
from keel.schemas.catalog import CATALOG_DIR, load_catalog
from keel.schemas.errors import InvalidSchema, RegistryError
from keel.schemas.registry.client import RegistryClient
from keel.settings import get_settings

schemas_app = command_group("schemas", "The Avro event catalog: check, register, list.")


def registry(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 in containers)."),
    port: int | None = typer.Option(None, help="Port [default: KEEL_REGISTRY_PORT, 8081]."),
) -> None:
    """Serve Keel's Confluent-compatible schema registry (state in a compacted Kafka topic)."""
    from keel.schemas.registry.server import serve

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    serve(settings, host, port or settings.registry_port)


CatalogOption = typer.Option(
    None, "--catalog", help="Catalog folder [default: the packaged schemas/catalog]."
)


@schemas_app.command("check")
def check(
    catalog: Path | None = CatalogOption,
    offline: bool = typer.Option(
        False, "--offline", help="Only parse the .avsc files; skip the registry."
    ),
) -> None:
    """Every .avsc parses, and each is compatible with what the registry holds (a CI gate:
    exits 1 naming each problem)."""
    try:
        cat = load_catalog(catalog or CATALOG_DIR)
    except InvalidSchema as exc:
        typer.echo(f"invalid schema: {exc}", err=True)
        raise typer.Exit(1) from None
    failures = 0
    client = None if offline else RegistryClient()
    for name in cat.types():
        et = cat.get(name)
        if client is None:
            typer.echo(f"{'ok':<12} {name}")
            continue
        status, ok, messages = compare_with_registry(client, et.subject, et.schema)
        typer.echo(f"{status:<12} {name} ({et.subject})")
        for message in messages:
            typer.echo(f"{'':<12} {message}", err=True)
        failures += not ok
    if failures:
        typer.echo(f"{failures} schema(s) incompatible with the registry", err=True)
        raise typer.Exit(1)


def compare_with_registry(
    client: RegistryClient, subject: str, schema: dict[str, Any]
) -> tuple[str, bool, list[str]]:
    """(status, ok, messages): `registered` as is, `new` subject, else `compatible` or
    `INCOMPATIBLE` with the latest version(s) under the subject's level."""
    try:
        schema_id = client.lookup(subject, schema)
        return f"registered:{schema_id}", True, []
    except RegistryError as exc:
        if exc.error_code == 40401:
            return "new", True, []
        if exc.error_code != 40403:
            raise
    ok, messages = client.check_compatibility(subject, schema)
    return ("compatible" if ok else "INCOMPATIBLE"), ok, messages


@schemas_app.command("register")
def register(catalog: Path | None = CatalogOption) -> None:
    """Register every catalog schema under its subject (topic-record name); print the ids."""
    cat = load_catalog(catalog or CATALOG_DIR)
    client = RegistryClient()
    for name in cat.types():
        et = cat.get(name)
        try:
            schema_id = client.register(et.subject, et.schema)
        except RegistryError as exc:
            typer.echo(f"{name}: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"{schema_id:>6}  {et.subject}")


@schemas_app.command("list")
def list_(
    registry_: bool = typer.Option(
        False, "--registry", help="List the registry's subjects instead."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the catalog's event types with their topic and subject (or the registry's subjects)."""
    if registry_:
        client = RegistryClient()
        rows = [{"subject": s, "versions": client.versions(s)} for s in client.subjects()]
        if as_json:
            typer.echo(json.dumps(rows))
        for row in [] if as_json else rows:
            typer.echo(f"{row['subject']}  versions {row['versions']}")
        return
    cat = load_catalog()
    rows_ = [
        {"type": t, "topic": cat.get(t).topic, "subject": cat.get(t).subject} for t in cat.types()
    ]
    if as_json:
        typer.echo(json.dumps(rows_))
        return
    for line in rows_:
        typer.echo(f"{line['type']:<24} {line['topic']:<14} {line['subject']}")
