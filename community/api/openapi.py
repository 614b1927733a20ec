"""``GET /api/openapi.json``: the OpenAPI 3.1 document of every declared operation.

Schemas come from the pydantic models (JSON Schema 2020-12, which OpenAPI 3.1 uses as is);
every operation also lists the statuses every operation can answer (problem+json).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from .base import ApiRoutes, Operation

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
    "required": ["type", "title", "status"],
}

_PATH_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")


def _schema_ref(model: type[BaseModel], components: dict[str, Any], mode: str) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)  # type: ignore[arg-type]
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    components.setdefault(model.__name__, schema)
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _implicit(op: Operation) -> dict[int, str]:
    out = {429: "Too many requests"}
    if op.body is not None:
        out.update({400: "Malformed JSON", 413: "Body too large", 415: "Not application/json",
                    422: "Body does not match the schema"})
    if op.query is not None:
        out[400] = "Invalid query parameters"
    if op.auth in ("user", "admin"):
        out[401] = "Not logged in"
        out[403] = "Forbidden (suspended account, missing CSRF token, or not allowed)"
    if op.auth == "optional":
        out[401] = "Invalid or expired access token"
    if op.method in ("POST", "PATCH", "PUT", "DELETE") and op.auth != "none":
        out[403] = "Forbidden (suspended account, missing CSRF token, or not allowed)"
    return out


def _parameters(op: Operation, components: dict[str, Any]) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}}
        for name in _PATH_PARAM.findall(op.path)
    ]
    if op.query is not None:
        schema = op.query.model_json_schema()
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            prop = dict(prop)
            prop.pop("title", None)
            params.append({"name": name, "in": "query", "required": name in required, "schema": prop})
    return params


def document(groups: list[ApiRoutes], *, title: str = "relaycast API", version: str = "1") -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``groups``."""
    components: dict[str, Any] = {"Problem": PROBLEM_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}
    for group in groups:
        for op in group.operations:
            path = _PATH_PARAM.sub(lambda m: "{" + m.group(1) + "}", op.path)
            responses: dict[str, Any] = {}
            for status, description in _implicit(op).items():
                responses[str(status)] = {"description": description,
                                          "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
            for status, model in op.responses.items():
                if model is None:
                    entry: dict[str, Any] = {"description": "No content" if status < 300 else "Error"}
                    if status >= 400:
                        entry["content"] = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
                else:
                    entry = {"description": model.__doc__.strip().splitlines()[0] if model.__doc__ else model.__name__,
                             "content": {"application/json": {"schema": _schema_ref(model, components, "serialization")}}}
                responses[str(status)] = entry
            item: dict[str, Any] = {
                "operationId": op.operation_id, "summary": op.summary, "tags": [op.tag],
                "parameters": _parameters(op, components), "responses": responses,
            }
            if op.description:
                item["description"] = op.description
            if op.auth in ("user", "admin"):
                item["security"] = [{"bearer": []}, {"cookie": []}]
            elif op.auth == "optional":
                item["security"] = [{}, {"bearer": []}, {"cookie": []}]
            if op.body is not None:
                item["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": _schema_ref(op.body, components, "validation")}}}
            paths.setdefault(path, {})[op.method.lower()] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "The relaycast platform API. Errors are RFC 9457 problem+json."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "rc_access"},
            },
        },
    }


def routes(groups: list[ApiRoutes]) -> list[web.RouteDef]:
    doc = document(groups)

    async def openapi_json(request: web.Request) -> web.Response:
        return web.json_response(doc, headers={"Cache-Control": "no-cache"})

    return [web.get("/api/openapi.json", openapi_json)]
