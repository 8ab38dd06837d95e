"""`keel doctor`'s registry checks (the `keel.doctor` entry point): the registry answers, and
every catalog schema agrees with what it holds under its subject (as `keel schemas check`
judges: registered as is, a new subject, or compatible with the latest version)."""

from __future__ import annotations

from keel.doctor import Check
from keel.schemas.catalog import load_catalog
from keel.schemas.cli import compare_with_registry
from keel.schemas.errors import RegistryError
from keel.schemas.registry.client import RegistryClient
from keel.settings import KeelSettings


def checks(settings: KeelSettings) -> list[Check]:
    url = settings.schema_registry_url
    with RegistryClient(url, timeout=10.0) as client:
        try:
            subjects = client.subjects()
        except RegistryError as exc:
            return [Check("registry", False, str(exc))]
        out = [Check("registry", True, f"{url} answers ({len(subjects)} subject(s))")]
        catalog = load_catalog()
        disagree, counts = [], {"registered": 0, "new": 0, "compatible": 0}
        for name in catalog.types():
            event_type = catalog.get(name)
            try:
                status, ok, messages = compare_with_registry(
                    client, event_type.subject, event_type.schema
                )
            except RegistryError as exc:
                ok, messages, status = False, [str(exc)], ""
            if ok:
                counts[status.split(":")[0]] += 1
            else:
                disagree.append(f"{name} ({event_type.subject}): {'; '.join(messages)}")
    out += [Check("catalog", False, f"{line} (see `keel schemas check`)") for line in disagree]
    if not disagree:
        detail = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
        out.append(Check("catalog", True, f"{len(catalog.types())} event types agree ({detail})"))
    return out
