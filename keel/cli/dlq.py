"""`keel dlq list|replay TOPIC`: any Keel dead-letter topic (jobs or stream processors)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from keel.command_group import command_group
from keel.deadletters import read, replay, replay_group
from keel.kafka import naming_brokers
from keel.settings import get_settings

dlq_app = command_group(
    "dlq", "Read and replay dead-letter topics (jobs and stream processors alike)."
)

Topic = Annotated[str, typer.Argument(help="The dead-letter topic.")]


@dlq_app.command("list")
def list_letters(
    topic: Topic,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per letter.")] = False,
) -> None:
    """Each dead letter: where it is, why it failed, where it came from."""
    settings = get_settings()
    with naming_brokers(settings):
        letters = read(settings, topic)
    if not letters and not as_json:
        typer.echo(f"no dead letters in {topic}", err=True)
    for letter in letters:
        if as_json:
            typer.echo(json.dumps(letter.to_dict()))
        else:
            typer.echo(
                f"{letter.partition}@{letter.offset}  {letter.reason or '-':<17} "
                f"from {letter.origin}  {letter.error}"
            )


@dlq_app.command("replay")
def replay_letters(
    topic: Topic,
    to: Annotated[
        str | None,
        typer.Option(help="Send every letter here instead of to the topic it came from."),
    ] = None,
) -> None:
    """Send the letters not replayed yet back (original key and bytes, a keel.replayed_from
    header), once the cause is fixed. Each letter is replayed once, however often this runs."""
    settings = get_settings()
    with naming_brokers(settings):
        letters = replay(settings, topic, to=to)
    targets = sorted({to or x.original_topic or "" for x in letters})
    where = f" to {', '.join(targets)}" if targets else ""
    typer.echo(f"replayed {len(letters)} dead letter(s) from {topic}{where}")
    typer.echo(f"(progress kept in consumer group {replay_group(topic)})", err=True)
