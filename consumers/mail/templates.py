"""Email templates (Jinja2): `<name>.subject.j2`, `<name>.txt.j2` and optionally
`<name>.html.j2` (autoescaped) in `consumers/mail/templates/`. Rendering is strict: a
variable the template needs and the job lacks is a permanent error naming it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from keel.consumers.errors import PermanentJobError

TEMPLATES_DIR = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str | None


def _money(value: Any, currency: str = "") -> str:
    try:
        amount = f"{float(value):,.2f}"
    except (TypeError, ValueError):
        amount = str(value)
    return f"{amount} {currency}".strip()


class Templates:
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or TEMPLATES_DIR
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(self.directory)),
            undefined=jinja2.StrictUndefined,
            autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",)),
            keep_trailing_newline=True,
        )
        self.env.filters["money"] = _money

    def names(self) -> list[str]:
        return sorted(
            p.name.removesuffix(".subject.j2") for p in self.directory.glob("*.subject.j2")
        )

    def render(self, name: str, data: Mapping[str, Any]) -> RenderedEmail:
        if name not in self.names():
            raise PermanentJobError(
                f"unknown email template {name!r}; known: {', '.join(self.names())}"
            )
        try:
            subject = self.env.get_template(f"{name}.subject.j2").render(data).strip()
            text = self.env.get_template(f"{name}.txt.j2").render(data)
            html = None
            if (self.directory / f"{name}.html.j2").exists():
                html = self.env.get_template(f"{name}.html.j2").render(data)
        except jinja2.UndefinedError as exc:
            raise PermanentJobError(f"template {name!r}: {exc.message}") from exc
        except jinja2.TemplateError as exc:
            raise PermanentJobError(f"template {name!r} failed: {exc}") from exc
        return RenderedEmail(" ".join(subject.split()), text, html)
