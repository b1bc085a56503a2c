"""The OpenAPI 3.1 document of the gateway, generated from the app's own routes.

Paths, methods, public-or-not, scopes and ticket support come from the router and the
route declarations (``routes/access.py``), so every route anyone adds appears. Request and
response shapes come from the static table below (DESIGN.md §5); a route missing from it
is still listed, described by its handler's docstring.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from . import __version__
from .routes.access import ROUTE_ACCESS, RouteAccess
from .settings import SETTINGS, UPSTREAM_ENV

_VARIABLE = re.compile(r"\{(\w+)(?::[^}]*)?\}")
_HIDDEN_METHODS = frozenset({"OPTIONS", "HEAD"})  # CORS preflight and GET's twin


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Mapping[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_OBJ = {"type": "object"}
_SSE = {"description": "Server-Sent Events stream",
        "content": {"text/event-stream": {"schema": {"type": "string"}}}}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message", "trace_id"], "properties": {
            "code": {"type": "string", "enum": [
                "VALIDATION_ERROR", "UNAUTHENTICATED", "FORBIDDEN", "INSUFFICIENT_SCOPE",
                "NOT_FOUND", "METHOD_NOT_ALLOWED", "PAYLOAD_TOO_LARGE", "RATE_LIMIT_EXCEEDED",
                "DOWNSTREAM_ERROR", "DOWNSTREAM_UNAVAILABLE", "CIRCUIT_OPEN",
                "DOWNSTREAM_TIMEOUT", "INTERNAL_ERROR"]},
            "message": {"type": "string"},
            "trace_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "details": {"type": "object"}}}}},
    "Alive": {"type": "object", "properties": {"status": {"const": "ok"}}},
    "Ready": {"type": "object", "properties": {
        "status": {"enum": ["ready", "not_ready"]},
        "checks": {"type": "object", "additionalProperties": {"type": "string"}}}},
    "Health": {"type": "object", "properties": {
        "status": {"enum": ["healthy", "degraded", "unhealthy"]},
        "uptime_s": {"type": "number"}, "version": {"type": "string"},
        "services": {"type": "object", "additionalProperties": {
            "type": "object", "properties": {
                "status": {"type": "string"}, "status_code": {"type": ["integer", "null"]},
                "response_time_ms": {"type": ["number", "null"]}}}}}},
    "ChatRequest": {"type": "object", "required": ["message"], "properties": {
        "user_id": {"type": "string"}, "message": {"type": "string", "minLength": 1},
        "context": {"type": "object"}}},
    "ChatResponse": {"type": "object", "properties": {
        "text": {"type": "string"}, "tool_calls": {"type": "array", "items": _OBJ},
        "meta": {"type": "object", "properties": {
            "trace_id": {"type": "string"}, "turn_id": {"type": "string"},
            "usage": {"type": "object", "properties": {
                "input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"}}},
            "finish_reason": {"type": "string",
                              "enum": ["stop", "length", "tool_calls"]}}}}},
    "PublishRequest": {"type": "object", "required": ["channel", "data"], "properties": {
        "channel": {"type": "string"}, "event": {"type": "string"}, "data": {}}},
    "Ticket": {"type": "object", "properties": {
        "ticket": {"type": "string"}, "expires_in": {"type": "integer"}}},
}

_CHANNEL = {"name": "channel", "in": "query", "required": True, "explode": True,
            "schema": {"type": "array", "items": {"type": "string"}},
            "description": "channel to subscribe (repeatable)"}
_LAST_EVENT_ID = {"name": "Last-Event-ID", "in": "header", "required": False,
                  "schema": {"type": "string"}, "description": "resume after this event id"}

# path (aiohttp canonical) -> method -> operation fragment (summary, body, responses).
OPERATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "/healthz": {"GET": {"summary": "Process alive (no I/O)",
                         "responses": {"200": _json(_ref("Alive"))}}},
    "/live": {"GET": {"summary": "Process alive (no I/O)",
                      "responses": {"200": _json(_ref("Alive"))}}},
    "/ready": {"GET": {"summary": "Ready for traffic: started, not draining, Redis reachable",
                       "responses": {"200": _json(_ref("Ready")),
                                     "503": _json(_ref("Ready"), "Not ready")}}},
    "/health": {"GET": {"summary": "Cascade health of every upstream",
                        "responses": {"200": _json(_ref("Health")),
                                      "503": _json(_ref("Health"), "Unhealthy")}}},
    "/metrics": {"GET": {"summary": "Prometheus metrics (OpenMetrics when asked by Accept)",
                         "responses": {"200": {"description": "Prometheus text", "content": {
                             "text/plain": {"schema": {"type": "string"}},
                             "application/openmetrics-text": {"schema": {"type": "string"}}}}}}},
    "/openapi.json": {"GET": {"summary": "This document",
                              "responses": {"200": _json(_OBJ)}}},
    "/docs": {"GET": {"summary": "Human-readable list of the routes",
                      "responses": {"200": {"description": "HTML page",
                                            "content": {"text/html": {}}}}}},
    "/": {"GET": {"summary": "Demo chat page",
                  "responses": {"200": {"description": "HTML page",
                                        "content": {"text/html": {}}}}}},
    "/v1/chat": {"POST": {
        "summary": "One agent turn, answered whole",
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _ref("ChatRequest")}}},
        "responses": {"200": _json(_ref("ChatResponse"))}}},
    "/v1/chat/stream": {
        "POST": {"summary": "One agent turn as SSE: token, tool_call, then done or error",
                 "requestBody": {"required": True, "content": {
                     "application/json": {"schema": _ref("ChatRequest")}}},
                 "responses": {"200": _SSE}},
        "GET": {"summary": "One agent turn as SSE (message in the query, for EventSource); "
                           "with ?turn_id= or Last-Event-ID, the rest of that turn",
                "parameters": [
                    {"name": "message", "in": "query", "required": False,
                     "schema": {"type": "string"}, "description": "starts a new turn"},
                    {"name": "turn_id", "in": "query", "required": False,
                     "schema": {"type": "string"}, "description": "resumes this turn"},
                    {**_LAST_EVENT_ID, "description": "<turn_id>:<seq>: resume that turn "
                                                      "after this event"}],
                "responses": {"200": _SSE, "204": {
                    "description": "the client has the turn's last event: nothing more"}}}},
    "/v1/ws": {"GET": {
        "summary": "WebSocket: chat turns and channel subscriptions (JSON messages with type)",
        "responses": {"101": {"description": "Switching Protocols"}}}},
    "/v1/events": {"GET": {"summary": "SSE subscription to channels, resumable",
                           "parameters": [_CHANNEL, _LAST_EVENT_ID],
                           "responses": {"200": _SSE}}},
    "/v1/events/publish": {"POST": {
        "summary": "Publish an event to every subscriber on every process",
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _ref("PublishRequest")}}},
        "responses": {"200": _json(_OBJ), "202": _json(_OBJ)}}},
    "/v1/usage": {"GET": {"summary": "The caller's limits and remaining quota",
                          "responses": {"200": _json(_OBJ)}}},
    "/v1/me": {"GET": {"summary": "The caller's identity and scopes",
                       "responses": {"200": _json(_OBJ)}}},
    "/v1/auth/ticket": {"POST": {
        "summary": "A short-lived ticket for ?ticket= on GET stream endpoints",
        "responses": {"200": _json(_ref("Ticket"))}}},
}

_ERRORS_PRIVATE = ("401", "403", "429")


def _openapi_path(canonical: str) -> tuple[str, list[str]]:
    """aiohttp's ``/v1/elr/{tail:.*}`` as OpenAPI ``/v1/elr/{tail}`` plus its variables."""
    names = _VARIABLE.findall(canonical)
    return _VARIABLE.sub(lambda m: "{" + m[1] + "}", canonical), names


def _proxy_note(app: web.Application, path: str) -> str | None:
    settings = app[SETTINGS]
    for route in settings.routes:
        if path == route.prefix or path.startswith(route.prefix.rstrip("/") + "/"):
            env = next((e for e, n in UPSTREAM_ENV.items() if n == route.upstream), None)
            where = f"`{route.upstream}` upstream" + (f" ({env})" if env else "")
            return f"Proxied unchanged to the {where}."
    return None


def _operation(app: web.Application, method: str, handler: Any, path: str,
               params: list[str], access: RouteAccess) -> dict[str, Any]:
    known = OPERATIONS.get(path, {}).get(method)
    op: dict[str, Any] = dict(known) if known else {}
    doc = inspect.getdoc(handler) or ""
    if "summary" not in op:
        op["summary"] = _proxy_note(app, path) or doc.split("\n", 1)[0] or f"{method} {path}"
    responses: dict[str, Any] = dict(op.get("responses") or {"200": {"description": "OK"}})
    if access.public:
        op["security"] = []
    else:
        schemes: list[dict[str, list[str]]] = [{"bearer": []}]
        if access.ticket:
            schemes.append({"ticket": []})
        op["security"] = schemes
        scopes = list(access.scopes_for(method))
        op["x-scopes"] = scopes
        needs = ", ".join(f"`{s}`" for s in scopes) if scopes else "any authenticated caller"
        op["description"] = f"Requires: {needs}." + (f" Cost: {access.cost}." if access.cost != 1
                                                      else "")
        for code in _ERRORS_PRIVATE:
            responses.setdefault(code, {"$ref": f"#/components/responses/E{code}"})
    responses.setdefault("default", {"$ref": "#/components/responses/Error"})
    op["responses"] = responses
    if params:
        op["parameters"] = [*op.get("parameters", []), *(
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
            for n in params)]
    op["operationId"] = f"{method.lower()}_{re.sub(r'[^A-Za-z0-9]+', '_', path).strip('_')}"
    return op


def build_openapi(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route ``app`` serves right now."""
    declared = app[ROUTE_ACCESS]
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method in _HIDDEN_METHODS:
            continue
        path, params = _openapi_path(resource.canonical)
        access = declared.get(resource.canonical, RouteAccess())
        methods = [route.method] if route.method != "*" else ["GET", "POST", "PUT", "PATCH",
                                                             "DELETE"]
        for method in methods:
            item = paths.setdefault(path, {})
            if method.lower() not in item:
                item[method.lower()] = _operation(app, method, route.handler, path, params,
                                                  access)
    error = _json(_ref("Error"), "Error in the one shape")
    return {
        "openapi": "3.1.0",
        "info": {"title": "luki-gateway", "version": __version__,
                 "description": "Streaming-first API gateway for the LUKi assistant."},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "A JWT, an API key or a service token"},
                "ticket": {"type": "apiKey", "in": "query", "name": "ticket",
                           "description": "Short-lived ticket from POST /v1/auth/ticket"}},
            "responses": {
                "Error": error,
                "E401": _json(_ref("Error"), "UNAUTHENTICATED"),
                "E403": _json(_ref("Error"), "FORBIDDEN or INSUFFICIENT_SCOPE"),
                "E429": _json(_ref("Error"), "RATE_LIMIT_EXCEEDED (see Retry-After)")}},
    }

