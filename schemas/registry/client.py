"""Client of any Confluent-compatible schema registry (Keel's own, Confluent, Karapace,
Apicurio's ccompat API). Thread-safe; ids and schemas are never fetched twice."""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import quote

import requests

from keel.schemas.errors import RegistryError
from keel.settings import get_settings

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def canonical(schema: dict[str, Any] | str) -> str:
    """A stable text for a schema: the cache key, and the form sent to the registry."""
    parsed = json.loads(schema) if isinstance(schema, str) else schema
    return json.dumps(parsed, sort_keys=True, separators=(",", ":"))


class RegistryClient:
    """`user_info` is "USER:PASSWORD" for HTTP basic auth (Confluent's basic.auth.user.info);
    by default KEEL_SCHEMA_REGISTRY_USER_INFO."""

    def __init__(
        self, url: str | None = None, *, timeout: float = 10.0, user_info: str | None = None
    ) -> None:
        settings = get_settings()
        self.url = (url or settings.schema_registry_url).rstrip("/")
        self.timeout = timeout
        self._http = requests.Session()
        self._http.headers["Accept"] = CONTENT_TYPE
        if user_info is None and settings.schema_registry_user_info is not None:
            user_info = settings.schema_registry_user_info.get_secret_value()
        if user_info:
            user, _, password = user_info.partition(":")
            self._http.auth = (user, password)
        self._lock = threading.Lock()  # guards the caches
        # Held while fetching a miss, so threads missing the same id or subject at once ask the
        # registry once: the second re-checks the cache after the first filled it.
        self._fetch_lock = threading.Lock()
        self._by_id: dict[int, dict[str, Any]] = {}
        self._ids: dict[tuple[str, str], int] = {}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls ----------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self._http.request(
                method, self.url + path, data=None if body is None else json.dumps(body),
                headers={"Content-Type": CONTENT_TYPE} if body is not None else None,
                timeout=self.timeout,
            )  # fmt: skip
        except requests.RequestException as exc:
            raise RegistryError(
                f"schema registry at {self.url} unreachable: {exc}", status=0, error_code=50003
            ) from exc
        if response.status_code >= 400:
            try:
                payload = response.json()
                message, code = (
                    payload.get("message", response.text),
                    int(payload.get("error_code", response.status_code)),
                )
            except ValueError:
                message, code = response.text, response.status_code
            if response.status_code in (401, 403):  # say which registry, and what to set
                message = (
                    f"schema registry at {self.url} refused the request: {message} "
                    "(KEEL_SCHEMA_REGISTRY_USER_INFO)"
                )
            raise RegistryError(message, status=response.status_code, error_code=code)
        return response.json()

    def register(self, subject: str, schema: dict[str, Any] | str) -> int:
        return self._subject_id(subject, schema, f"/subjects/{quote(subject, safe='')}/versions")

    def lookup(self, subject: str, schema: dict[str, Any] | str) -> int:
        """The id of a schema already registered under `subject` (RegistryError 40403 if not)."""
        return self._subject_id(subject, schema, f"/subjects/{quote(subject, safe='')}")

    def _subject_id(self, subject: str, schema: dict[str, Any] | str, path: str) -> int:
        text = canonical(schema)
        key = (subject, text)
        schema_id = self._ids.get(key)
        if schema_id is not None:
            return schema_id
        with self._fetch_lock:
            schema_id = self._ids.get(key)
            if schema_id is None:
                schema_id = int(self._call("POST", path, {"schema": text})["id"])
                with self._lock:
                    self._ids[key] = schema_id
                    self._by_id.setdefault(schema_id, json.loads(text))
        return schema_id

    def get_schema(self, schema_id: int) -> dict[str, Any]:
        schema = self._by_id.get(schema_id)
        if schema is not None:
            return schema
        with self._fetch_lock:
            schema = self._by_id.get(schema_id)
            if schema is None:
                schema = json.loads(self._call("GET", f"/schemas/ids/{schema_id}")["schema"])
                with self._lock:
                    self._by_id[schema_id] = schema
        return schema

    def latest(self, subject: str) -> tuple[int, int, dict[str, Any]]:
        """(id, version, schema) of the subject's latest version; not cached (it moves)."""
        result = self._call("GET", f"/subjects/{quote(subject, safe='')}/versions/latest")
        return int(result["id"]), int(result["version"]), json.loads(result["schema"])

    def check_compatibility(
        self, subject: str, schema: dict[str, Any] | str
    ) -> tuple[bool, list[str]]:
        try:
            result = self._call(
                "POST", f"/compatibility/subjects/{quote(subject, safe='')}/versions/latest?verbose=true",
                {"schema": canonical(schema)},
            )  # fmt: skip
        except RegistryError as exc:
            if exc.error_code in (40401, 40402):  # nothing registered yet: anything goes
                return True, []
            raise
        return bool(result["is_compatible"]), list(result.get("messages", []))

    def subjects(self) -> list[str]:
        return list(self._call("GET", "/subjects"))

    def versions(self, subject: str) -> list[int]:
        return list(self._call("GET", f"/subjects/{quote(subject, safe='')}/versions"))
