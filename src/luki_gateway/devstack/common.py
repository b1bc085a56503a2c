"""What every reference upstream shares: the error shape, JSON bodies, /health."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web


def error(status: int, code: str, message: str,
          details: Mapping[str, Any] | None = None) -> web.HTTPException:
    """An HTTP error in the gateway's error shape, ready to raise."""
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = dict(details)
    cls = web.HTTPUnprocessableEntity if status == 422 else (
        web.HTTPNotFound if status == 404 else web.HTTPBadRequest)
    return cls(text=json.dumps({"error": body}), content_type="application/json")


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; 400 when it is not one."""
    try:
        body = await request.json()
    except ValueError:
        raise error(400, "VALIDATION_ERROR", "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise error(400, "VALIDATION_ERROR", "body must be a JSON object")
    return body


def text_field(body: Mapping[str, Any], name: str, *, required: bool = True,
               max_len: int = 10_000) -> str | None:
    """A string field of ``body``; 422 when missing (if required), not a string, or too long."""
    value = body.get(name)
    if value is None:
        if required:
            raise error(422, "VALIDATION_ERROR", f"{name} is required", {"field": name})
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise error(422, "VALIDATION_ERROR", f"{name} must be a non-empty string",
                    {"field": name})
    if len(value) > max_len:
        raise error(422, "VALIDATION_ERROR", f"{name} is longer than {max_len} characters",
                    {"field": name})
    return value


def int_param(raw: str | None, name: str, *, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high]; 422 otherwise."""
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise error(422, "VALIDATION_ERROR", f"{name} must be an integer",
                    {"field": name}) from None
    if not low <= value <= high:
        raise error(422, "VALIDATION_ERROR", f"{name} must be between {low} and {high}",
                    {"field": name})
    return value


def caller(request: web.Request, explicit: str | None) -> str:
    """The user a request is about: explicit ``user_id``, else the gateway's principal."""
    user = explicit or request.headers.get("X-LUKi-Principal")
    if not user:
        raise error(422, "VALIDATION_ERROR", "user_id is required", {"field": "user_id"})
    return user


def health_handler(service: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """GET /health for ``service``: always healthy while the process runs."""

    async def health(request: web.Request) -> web.Response:
        """This reference service is up."""
        return web.json_response({"status": "healthy", "service": service})

    return health
