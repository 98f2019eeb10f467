"""The OpenAPI document, generated from the schema/ Structs (the single source of truth)."""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from schema.rest import ChunkPage, ErrorBody, Health, TaskCreated, TaskInfo, TaskList, TaskSpec

_MODELS = (TaskSpec, TaskInfo, TaskCreated, TaskList, ChunkPage, ErrorBody, Health)


def _ref(model: type) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _op(summary: str, ok: type | None, status: int = 200, **extra: Any) -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(status): {"description": "OK", **(
            {"content": {"application/json": {"schema": _ref(ok)}}} if ok else {})},
        "default": {"description": "error",
                    "content": {"application/json": {"schema": _ref(ErrorBody)}}},
    }
    return {"summary": summary, "responses": responses, **extra}


_TASK_ID = [{"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}]


@cache
def openapi_document() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        _MODELS, ref_template="#/components/schemas/{name}"
    )
    upload = {
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["code", "data"],
            "properties": {
                "code": {"type": "string", "format": "binary",
                         "description": "main.py, or a .zip with main.py at its root"},
                "data": {"type": "string", "format": "binary",
                         "description": "a JSON array, JSON Lines or CSV file"},
                "spec": {"type": "string", "description": "TaskSpec as JSON"},
            }}}},
    }
    results_params = [
        *_TASK_ID,
        {"name": "format", "in": "query", "schema": {"enum": ["json", "jsonl"]}},
        {"name": "partial", "in": "query", "schema": {"type": "boolean"}},
    ]
    page_params = [
        *_TASK_ID,
        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {"name": "limit", "in": "query",
         "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
    ]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Task Network", "version": "0.1.0"},
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": _op("Ready check", Health, security=[])},
            "/api/tasks": {
                "post": _op("Create a task", TaskCreated, 201, requestBody=upload),
                "get": _op("List your tasks", TaskList),
            },
            "/api/tasks/{task_id}": {"get": _op("One task", TaskInfo, parameters=_TASK_ID)},
            "/api/tasks/{task_id}/chunks": {
                "get": _op("A page of a task's chunks", ChunkPage, parameters=page_params)},
            "/api/tasks/{task_id}/results": {
                "get": _op("Outputs in item order (streamed)", None,
                           parameters=results_params)},
            "/api/tasks/{task_id}/cancel": {
                "post": _op("Cancel a task", TaskInfo, parameters=_TASK_ID)},
            "/api/tasks/{task_id}/code": {
                "get": _op("The task's code as a zip (for workers holding a lease)", None,
                           parameters=_TASK_ID)},
        },
    }
