"""The registry's REST API, as Confluent Schema Registry serves it (the subset clients use).

Each handler parses its request, calls the registry's service (keel.schemas.registry.service,
where the state is read and written) and answers. Errors answer with Confluent's body
`{"error_code": N, "message": "..."}`: the service's refusals with their code (404 for
not found, 409 incompatible, 422 invalid), 415 unsupported content type, 400 malformed
body, 413 too large, 50001 store errors."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any

from aiohttp import web

from keel import health
from keel.schemas.errors import SchemaError
from keel.schemas.registry.auth import Denied, RegistryUsers
from keel.schemas.registry.service import (
    Incompatible,
    Invalid,
    NotFound,
    Refused,
    Registry,
    submitted_schema,
)
from keel.schemas.registry.store import KafkaStore, StoreUnavailable

log = logging.getLogger(__name__)
JSON_TYPES = {
    "application/vnd.schemaregistry.v1+json", "application/vnd.schemaregistry+json",
    "application/json", "application/octet-stream", "",
}  # fmt: skip
MAX_SCHEMA_BYTES = 256 * 1024
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
STATUS = {NotFound: 404, Incompatible: 409, Invalid: 422}  # of the service's refusals
REGISTRY: web.AppKey[Registry] = web.AppKey("registry", Registry)
RESPONSES: web.AppKey[Counter[int]] = web.AppKey("responses", Counter)
USERS: web.AppKey[RegistryUsers | None] = web.AppKey("users")


class BadRequest(SchemaError):
    """A request the HTTP layer refuses before the service sees it (the status is its code)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _ok(body: Any) -> web.Response:
    return web.Response(text=json.dumps(body), content_type=CONTENT_TYPE)


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    response = await _answer(request, handler)
    request.app[RESPONSES][response.status] += 1
    return response


async def _answer(request: web.Request, handler: Any) -> web.StreamResponse:
    headers = {}
    try:
        users = request.app[USERS]
        if users is not None:
            users.authorize(request.method, request.path, request.headers.get("Authorization"))
        return await handler(request)
    except Denied as exc:
        status, code, message = exc.status, exc.code, exc.message
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="keel-registry"'
    except Refused as exc:
        status = next((s for kind, s in STATUS.items() if isinstance(exc, kind)), 400)
        code, message = exc.code, exc.message
    except BadRequest as exc:
        status, code, message = exc.status, exc.status, exc.message
    except StoreUnavailable as exc:
        status, code, message = 500, 50001, f"Error in the backend data store: {exc}"
    except web.HTTPRequestEntityTooLarge:
        status, code, message = 413, 413, f"request body larger than {MAX_SCHEMA_BYTES} bytes"
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # No such route (404) or method (405): Confluent answers with the HTTP status as code.
        status, code, message = exc.status, exc.status, f"{exc.reason}: {request.path}"
    except Exception:
        log.exception("registry request %s %s failed", request.method, request.path)
        status, code, message = 500, 50001, "Error in the backend data store (see the log)"
    body = json.dumps({"error_code": code, "message": message})
    return web.Response(status=status, text=body, content_type=CONTENT_TYPE, headers=headers)


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_type not in JSON_TYPES:
        raise BadRequest(
            415,
            f"unsupported content type {request.content_type!r}; send application/vnd.schemaregistry.v1+json",
        )
    raw = await request.read()
    if len(raw) > MAX_SCHEMA_BYTES:
        raise BadRequest(413, f"request body of {len(raw)} bytes is larger than {MAX_SCHEMA_BYTES}")
    try:
        body = json.loads(raw or b"{}")
    except ValueError as exc:
        raise BadRequest(400, f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "the body must be a JSON object")
    return body


async def _schema(request: web.Request) -> str:
    return submitted_schema(await _body(request))


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name) == "true"


# -- routes ---------------------------------------------------------------------------------
routes = web.RouteTableDef()


@routes.get("/")
async def root(request: web.Request) -> web.Response:
    return _ok({})


# -- the operational surface (keel.health): /healthz, /readyz, /metrics -------------------
async def healthz(app: web.Application) -> health.Checks:
    return {"http": health.check(True)}


async def readyz(app: web.Application) -> health.Checks:
    """Loaded the store topic and still reading it."""
    store = app[REGISTRY].store
    return {
        "store": health.check(store.ready(), topic=store.topic, schemas=len(store.state.schemas))
    }


async def metrics(app: web.Application) -> bytes:
    schemas, subjects, offset = app[REGISTRY].counts()
    lines = [
        "# HELP keel_registry_schemas Distinct schemas (ids) known to this replica.",
        "# TYPE keel_registry_schemas gauge",
        f"keel_registry_schemas {schemas}",
        "# HELP keel_registry_subjects Subjects with at least one live version.",
        "# TYPE keel_registry_subjects gauge",
        f"keel_registry_subjects {subjects}",
        "# HELP keel_registry_store_offset Offset of the last store record applied.",
        "# TYPE keel_registry_store_offset gauge",
        f"keel_registry_store_offset {offset}",
        "# HELP keel_registry_responses_total Answers by HTTP status.",
        "# TYPE keel_registry_responses_total counter",
    ]
    for status, count in sorted(app[RESPONSES].items()):
        lines.append(f'keel_registry_responses_total{{status="{status}"}} {count}')
    return ("\n".join(lines) + "\n").encode()


@routes.get("/schemas/types")
async def schema_types(request: web.Request) -> web.Response:
    return _ok(["AVRO"])


@routes.get("/subjects")
async def list_subjects(request: web.Request) -> web.Response:
    return _ok(request.app[REGISTRY].subjects(_flag(request, "deleted")))


@routes.post("/subjects/{subject}/versions")
async def register(request: web.Request) -> web.Response:
    subject, text = request.match_info["subject"], await _schema(request)
    schema_id = await asyncio.to_thread(request.app[REGISTRY].register, subject, text)
    return _ok({"id": schema_id})


@routes.post("/subjects/{subject}")
async def lookup(request: web.Request) -> web.Response:
    subject, text = request.match_info["subject"], await _schema(request)
    return _ok(request.app[REGISTRY].lookup(subject, text, _flag(request, "deleted")))


@routes.get("/subjects/{subject}/versions")
async def list_versions(request: web.Request) -> web.Response:
    subject = request.match_info["subject"]
    return _ok(request.app[REGISTRY].versions(subject, _flag(request, "deleted")))


@routes.get("/subjects/{subject}/versions/{version}")
async def get_version(request: web.Request) -> web.Response:
    subject, version = request.match_info["subject"], request.match_info["version"]
    return _ok(request.app[REGISTRY].version(subject, version, _flag(request, "deleted")))


@routes.get("/subjects/{subject}/versions/{version}/schema")
async def get_version_schema(request: web.Request) -> web.Response:
    subject, version = request.match_info["subject"], request.match_info["version"]
    text = request.app[REGISTRY].version(subject, version)["schema"]
    return web.Response(text=text, content_type="application/json")


@routes.get("/schemas")
async def list_schemas(request: web.Request) -> web.Response:
    """Every live (subject, version) with its id and schema; `subjectPrefix` filters."""
    prefix = request.query.get("subjectPrefix", "")
    deleted, latest_only = _flag(request, "deleted"), _flag(request, "latestOnly")
    return _ok(request.app[REGISTRY].schemas(prefix, deleted, latest_only))


@routes.get("/subjects/{subject}/versions/{version}/referencedby")
async def referenced_by(request: web.Request) -> web.Response:
    subject, version = request.match_info["subject"], request.match_info["version"]
    return _ok(request.app[REGISTRY].referenced_by(subject, version))


@routes.get("/schemas/ids/{id}")
async def get_by_id(request: web.Request) -> web.Response:
    return _ok({"schema": request.app[REGISTRY].schema(request.match_info["id"])})


@routes.get("/schemas/ids/{id}/schema")
async def get_raw_by_id(request: web.Request) -> web.Response:
    text = request.app[REGISTRY].schema(request.match_info["id"])
    return web.Response(text=text, content_type="application/json")


@routes.get("/schemas/ids/{id}/versions")
async def versions_by_id(request: web.Request) -> web.Response:
    return _ok(request.app[REGISTRY].schema_versions(request.match_info["id"]))


@routes.get("/schemas/ids/{id}/subjects")
async def subjects_by_id(request: web.Request) -> web.Response:
    schema_id = request.match_info["id"]
    return _ok(request.app[REGISTRY].schema_subjects(schema_id, _flag(request, "deleted")))


@routes.get("/contexts")
async def contexts(request: web.Request) -> web.Response:
    """Keel's registry has the default context only."""
    return _ok(["."])


@routes.delete("/subjects/{subject}")
async def delete_subject(request: web.Request) -> web.Response:
    subject, permanent = request.match_info["subject"], _flag(request, "permanent")
    return _ok(await asyncio.to_thread(request.app[REGISTRY].delete, subject, None, permanent))


@routes.delete("/subjects/{subject}/versions/{version}")
async def delete_version(request: web.Request) -> web.Response:
    subject, version = request.match_info["subject"], request.match_info["version"]
    delete = request.app[REGISTRY].delete
    deleted = await asyncio.to_thread(delete, subject, version, _flag(request, "permanent"))
    return _ok(deleted[0])


@routes.get("/mode")
async def get_mode(request: web.Request) -> web.Response:
    return _ok({"mode": "READWRITE"})


@routes.get("/mode/{subject}")
async def get_subject_mode(request: web.Request) -> web.Response:
    return _ok({"mode": "READWRITE"})


@routes.get("/config")
async def get_global_config(request: web.Request) -> web.Response:
    return _ok({"compatibilityLevel": request.app[REGISTRY].level()})


@routes.get("/config/{subject}")
async def get_subject_config(request: web.Request) -> web.Response:
    subject, default = request.match_info["subject"], _flag(request, "defaultToGlobal")
    return _ok({"compatibilityLevel": request.app[REGISTRY].subject_level(subject, default)})


@routes.put("/config")
@routes.put("/config/{subject}")
async def put_config(request: web.Request) -> web.Response:
    body = await _body(request)
    level = body.get("compatibility", body.get("compatibilityLevel"))
    subject = request.match_info.get("subject")  # none: the global level
    return _ok(
        {"compatibility": await asyncio.to_thread(request.app[REGISTRY].set_level, subject, level)}
    )


@routes.delete("/config")
@routes.delete("/config/{subject}")
async def delete_config(request: web.Request) -> web.Response:
    subject = request.match_info.get("subject")  # none: the global level
    level = await asyncio.to_thread(request.app[REGISTRY].delete_level, subject)
    return _ok({"compatibilityLevel": level})


@routes.post("/compatibility/subjects/{subject}/versions/{version}")
@routes.post("/compatibility/subjects/{subject}/versions")
async def compatibility(request: web.Request) -> web.Response:
    """Check against one version (all of them under a *_TRANSITIVE level) or, with no
    version, as a registration would."""
    subject, version = request.match_info["subject"], request.match_info.get("version")
    text = await _schema(request)
    problems = request.app[REGISTRY].compatibility(subject, version, text)
    body: dict[str, Any] = {"is_compatible": not problems}
    if _flag(request, "verbose"):
        body["messages"] = problems
    return _ok(body)


def create_app(store: KafkaStore, users: RegistryUsers | None = None) -> web.Application:
    """The REST API on `store`; with `users`, every request but the probes and /metrics
    needs HTTP basic auth (keel.schemas.registry.auth)."""
    app = web.Application(middlewares=[errors_middleware], client_max_size=MAX_SCHEMA_BYTES * 4)
    app[REGISTRY] = Registry(store)
    app[USERS] = users
    app[RESPONSES] = Counter()
    app.add_routes(routes)
    app.add_routes(health.routes(healthz=healthz, readyz=readyz, metrics=metrics))
    return app


__all__ = ["SchemaError", "create_app"]
