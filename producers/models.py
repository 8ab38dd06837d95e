"""Pydantic models of the API's answers; with `keel.schemas.envelope`'s request models they make
/openapi.json."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from keel.schemas.envelope import EventBatchIn, EventIn


class FieldError(BaseModel):
    index: int | None = Field(None, description="Position in the batch (absent for one event).")
    field: str = Field(description="Dotted path of the field, e.g. items.0.sku; '' for the event.")
    error: str = Field(description="The rule it broke.")


class Accepted(BaseModel):
    event_id: str
    topic: str
    partition: int
    offset: int


class ItemResult(BaseModel):
    index: int
    status: Literal["accepted", "rejected", "failed"]
    event_id: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    errors: list[FieldError] | None = None


class BatchResult(BaseModel):
    accepted: int
    rejected: int
    failed: int = 0
    results: list[ItemResult]


class ErrorBody(BaseModel):
    error: str = Field(description="What went wrong, in a sentence.")
    errors: list[FieldError] = Field(default_factory=list)
    results: list[ItemResult] | None = None


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(ref_template="#/components/schemas/{model}")


def openapi(max_body: int, max_batch: int) -> dict[str, Any]:
    components: dict[str, Any] = {}
    for model in (EventIn, EventBatchIn, Accepted, BatchResult, ErrorBody):
        schema = _schema(model)
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    components["EventBatchIn"]["properties"]["events"]["maxItems"] = max_batch
    ref = {m: {"$ref": f"#/components/schemas/{m}"} for m in components}

    def error(description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": ref["ErrorBody"]}},
        }

    retry = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Keel events API", "version": "1"},
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}],
        "paths": {
            "/v1/events": {
                "post": {
                    "summary": "Ingest one event or a batch; answered after Kafka acknowledged.",
                    "requestBody": {
                        "required": True,
                        "description": f"At most {max_body} bytes.",
                        "content": {
                            "application/json": {
                                "schema": {"oneOf": [ref["EventIn"], ref["EventBatchIn"]]}
                            }
                        },
                    },
                    "responses": {
                        "202": {
                            "description": "Every event is on Kafka.",
                            "content": {
                                "application/json": {
                                    "schema": {"oneOf": [ref["Accepted"], ref["BatchResult"]]}
                                }
                            },
                        },
                        "207": {
                            "description": "Some events of the batch are on Kafka; see results.",
                            "content": {"application/json": {"schema": ref["BatchResult"]}},
                        },
                        "400": error("The body is not JSON, or not an event or a batch."),
                        "401": error("Missing or unknown API key."),
                        "403": error("The API key may not send this event type."),
                        "413": error("Body, batch or event too large."),
                        "415": error("Content-Type is not application/json."),
                        "422": error("No event is valid; each error names its field and rule."),
                        "429": {**error("Rate limit of the API key."), "headers": retry},
                        "503": {**error("Kafka cannot take events now; retry."), "headers": retry},
                    },
                }
            },
            "/healthz": {"get": {"security": [], "responses": {"200": {"description": "alive"}}}},
            "/readyz": {
                "get": {
                    "security": [],
                    "responses": {
                        "200": {"description": "broker and registry reachable"},
                        "503": {"description": "not ready"},
                    },
                }
            },
            "/metrics": {
                "get": {"security": [], "responses": {"200": {"description": "Prometheus"}}}
            },
        },
    }
