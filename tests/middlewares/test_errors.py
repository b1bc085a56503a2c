"""The error middleware: every failure answers the one JSON shape, never HTML or a traceback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from luki_gateway.app import create_app
from luki_gateway.errors import RateLimitExceeded
from luki_gateway.routes.access import PUBLIC, declare
from luki_gateway.settings import Settings

LEAKY = "sk_live_leakyleakyleaky and /srv/secret/path"


async def boom(request: web.Request) -> web.Response:
    """Test route: an unexpected exception whose text must never reach the client."""
    raise RuntimeError(LEAKY)


async def boom_mid_stream(request: web.Request) -> web.StreamResponse:
    """Test route: fails after the response headers went out."""
    resp = web.StreamResponse()
    await resp.prepare(request)
    await resp.write(b"partial")
    raise RuntimeError(LEAKY)


async def limited(request: web.Request) -> web.Response:
    """Test route: a GatewayError with its own headers."""
    raise RateLimitExceeded(retry_after=7)


async def forbidden(request: web.Request) -> web.Response:
    """Test route: aiohttp's own 403."""
    raise web.HTTPForbidden(text="<html>nope</html>")


async def teapot(request: web.Request) -> web.Response:
    """Test route: an aiohttp HTTP error with no code of ours."""
    raise web.HTTPRequestRangeNotSatisfiable()


def app_with_failures(settings: Settings) -> web.Application:
    """The real app plus routes that fail in each way."""
    app = create_app(settings)
    for path, handler in (("/test/boom", boom), ("/test/boom-stream", boom_mid_stream),
                          ("/test/limited", limited), ("/test/forbidden", forbidden),
                          ("/test/range", teapot)):
        declare(app, app.router.add_get(path, handler), PUBLIC)
    return app


async def error_of(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The error object of a JSON error answer, after checking the shape and trace id."""
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert error["trace_id"] == resp.headers["traceparent"].split("-")[1]
    assert {"code", "message", "trace_id"} <= set(error) <= {"code", "message", "trace_id",
                                                              "details"}
    return error


@pytest.mark.parametrize("accept", ["application/json", "text/html,*/*;q=0.8"])
async def test_not_found_and_method_not_allowed(gateway: Callable[..., Any], accept: str) -> None:
    """404 and 405 answer JSON even to a browser asking for HTML; 405 keeps Allow."""
    client = await gateway()
    resp = await client.get("/nope", headers={"Accept": accept})
    assert resp.status == 404
    assert (await error_of(resp))["code"] == "NOT_FOUND"
    resp = await client.post("/metrics", headers={"Accept": accept})
    assert resp.status == 405
    assert (await error_of(resp))["code"] == "METHOD_NOT_ALLOWED"
    assert "GET" in resp.headers["Allow"]


@pytest.mark.parametrize("accept", ["application/json", "text/html"])
async def test_unhandled_exception_is_500_logged_not_returned(
        serve_app: Callable[..., Any], make_settings: Callable[..., Settings],
        captured_logs: Callable[[], list[dict[str, Any]]], accept: str) -> None:
    """An unexpected exception: 500 INTERNAL_ERROR to the client, the traceback only in the log."""
    client = await serve_app(app_with_failures(make_settings()))
    resp = await client.get("/test/boom", headers={"Accept": accept})
    assert resp.status == 500
    text = await resp.text()
    assert "RuntimeError" not in text and "leaky" not in text and "Traceback" not in text
    error = await error_of(resp)
    assert error["code"] == "INTERNAL_ERROR"
    logged = [line for line in captured_logs() if line["event"] == "unhandled error"]
    assert len(logged) == 1
    assert "Traceback" in logged[0]["exception"]
    assert "RuntimeError" in logged[0]["exception"]
    assert "sk_live_leaky" not in logged[0]["exception"]  # redacted even in tracebacks
    assert logged[0]["trace_id"] == error["trace_id"]


async def test_failure_after_headers_closes_the_stream(
        serve_app: Callable[..., Any], make_settings: Callable[..., Settings],
        captured_logs: Callable[[], list[dict[str, Any]]]) -> None:
    """A stream that fails midway is cut (no second answer glued on) and the failure logged."""
    client = await serve_app(app_with_failures(make_settings()))
    resp = await client.get("/test/boom-stream")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    assert any(line["event"] == "unhandled error" for line in captured_logs())
    assert (await client.get("/healthz")).status == 200  # the server is fine


async def test_gateway_errors_keep_their_headers(serve_app: Callable[..., Any],
                                                 make_settings: Callable[..., Settings]) -> None:
    """A GatewayError's own headers (Retry-After) reach the client with the JSON body."""
    client = await serve_app(app_with_failures(make_settings()))
    resp = await client.get("/test/limited")
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "7"
    assert (await error_of(resp))["code"] == "RATE_LIMIT_EXCEEDED"


async def test_aiohttp_http_errors_are_translated(serve_app: Callable[..., Any],
                                                  make_settings: Callable[..., Settings]) -> None:
    """aiohttp's HTTPForbidden and other 4xx become our codes, their HTML text dropped."""
    client = await serve_app(app_with_failures(make_settings()))
    resp = await client.get("/test/forbidden")
    assert resp.status == 403
    assert (await error_of(resp))["code"] == "FORBIDDEN"
    assert "<html>" not in await resp.text()
    resp = await client.get("/test/range")
    assert resp.status == 416
    assert (await error_of(resp))["code"] == "VALIDATION_ERROR"
