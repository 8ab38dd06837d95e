"""Subscriptions: a JSON or TOML file validated with pydantic (`load_subscriptions`); a bad
file is one `SubscriptionError` naming the subscription and the field."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    ValidationError,
    field_validator,
)

from keel.connectors.webhooks.errors import SubscriptionError
from keel.schemas.catalog import load_catalog

MIN_SECRET_LENGTH = 16  # a guessable key makes the signature worthless
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_TOPIC = r"^[A-Za-z0-9._-]{1,249}$"


class Subscription(BaseModel):
    """One subscriber: where to POST, which event types, the signing secret, and optional
    overrides of the KEEL_WEBHOOKS_* defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME, description="Unique; names the dead-letter topic.")
    url: HttpUrl
    events: Literal["*"] | list[str] = Field(
        "*", description='"*" for all, or event types (shell patterns: "order.*").'
    )
    secret: SecretStr = Field(description="HMAC-SHA256 key, shared with the subscriber.")
    timeout_s: float | None = Field(None, gt=0)
    max_attempts: int | None = Field(None, ge=1)
    max_age_s: float | None = Field(None, gt=0)
    concurrency: int | None = Field(None, ge=1)
    dead_letter_topic: str | None = Field(None, pattern=_TOPIC)

    @field_validator("events")
    @classmethod
    def _known_types(cls, value: Literal["*"] | list[str]) -> Literal["*"] | list[str]:
        if value == "*":
            return value
        if not value:
            raise ValueError('must name at least one event type (or be "*" for all)')
        known = load_catalog().types()
        for pattern in value:
            if not fnmatch.filter(known, pattern):
                raise ValueError(
                    f"{pattern!r} matches no event type of the catalog ({', '.join(known)})"
                )
        return value

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters")
        return value

    def wants(self, event_type: str) -> bool:
        if self.events == "*":
            return True
        return any(fnmatch.fnmatchcase(event_type, p) for p in self.events)


class SubscriptionsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    subscriptions: list[Subscription] = Field(min_length=1)


def _describe(error: Mapping[str, Any], raw: Any) -> str:
    """One pydantic error as `subscription 'x' (#2) field 'url': <message>`."""
    loc = list(error.get("loc", ()))
    where = "file"
    if len(loc) >= 2 and loc[0] == "subscriptions" and isinstance(loc[1], int):
        index = loc[1]
        name = None
        items = raw.get("subscriptions") if isinstance(raw, dict) else None
        if isinstance(items, list) and index < len(items) and isinstance(items[index], dict):
            name = items[index].get("name")
        where = f"subscription {name!r} (#{index + 1})" if name else f"subscription #{index + 1}"
        loc = loc[2:]
    elif loc and loc[0] == "subscriptions":
        loc = loc[1:] if len(loc) > 1 else []
        where = "subscriptions"
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if loc:
        return f"{where} field '{'.'.join(str(x) for x in loc)}': {message}"
    return f"{where}: {message}"


def parse_subscriptions(raw: Any, source: str = "subscriptions") -> list[Subscription]:
    """Validate already-parsed data: `{"subscriptions": [...]}` or a bare list."""
    if isinstance(raw, list):
        raw = {"subscriptions": raw}
    if not isinstance(raw, dict):
        raise SubscriptionError(f"{source}: expected a 'subscriptions' list")
    try:
        subs = list(SubscriptionsFile.model_validate(raw).subscriptions)
    except ValidationError as exc:
        problems = [_describe(e, raw) for e in exc.errors()]
        raise SubscriptionError(f"{source}: {'; '.join(problems)}") from None
    first: dict[str, int] = {}
    for index, sub in enumerate(subs, 1):
        if sub.name in first:
            raise SubscriptionError(
                f"{source}: subscription {sub.name!r} (#{index}) field 'name': "
                f"already used by subscription #{first[sub.name]} (names must be unique)"
            )
        first[sub.name] = index
    return subs


def load_subscriptions(path: Path) -> list[Subscription]:
    """Read and validate a `.toml` (`[[subscriptions]]` tables) or `.json` file."""
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise SubscriptionError(f"{path}: a subscriptions file ends in .toml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SubscriptionError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        raw: Any = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise SubscriptionError(f"{path}: not valid {suffix[1:].upper()}: {exc}") from None
    return parse_subscriptions(raw, str(path))
