"""Security and identity headers on every response: normal, error, streaming, HTML."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from luki_gateway.app import create_app
from luki_gateway.routes.access import PUBLIC, declare
from luki_gateway.settings import Settings

PRODUCTION_SECRETS = {"auth": {"jwt_secret": "x" * 40, "api_key_pepper": "p" * 32},
                      "cors_origins": ["https://app.example"]}


async def stream(request: web.Request) -> web.StreamResponse:
    """Test route: a streaming (SSE-like) response prepared by the handler itself."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(b"data: one\n\n")
    await resp.write_eof()
    return resp


async def page(request: web.Request) -> web.Response:
    """Test route: an HTML page."""
    return web.Response(text="<!doctype html><title>x</title>", content_type="text/html")


def app_for(settings: Settings) -> web.Application:
    """The real app plus a streaming route and an HTML route."""
    app = create_app(settings)
    declare(app, app.router.add_get("/test/stream", stream), PUBLIC)
    declare(app, app.router.add_get("/test/page", page), PUBLIC)
    return app


def assert_security_headers(resp: aiohttp.ClientResponse, *, hsts: bool) -> None:
    """The headers every response must carry."""
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["X-Request-ID"]
    assert resp.headers["traceparent"].startswith("00-")
    assert resp.headers["Server"] == "luki-gateway"  # no software versions
    assert ("Strict-Transport-Security" in resp.headers) is hsts
    if hsts:
        assert resp.headers["Strict-Transport-Security"].startswith("max-age=")


@pytest.mark.parametrize(("environment", "hsts"), [("development", False), ("staging", True),
                                                   ("production", True)])
async def test_headers_on_normal_error_and_streaming_responses(
        serve_app: Callable[..., Any], make_settings: Callable[..., Settings],
        environment: str, hsts: bool) -> None:
    """nosniff, frame deny, referrer policy and ids everywhere; HSTS outside development."""
    overrides: dict[str, Any] = dict(PRODUCTION_SECRETS) if environment == "production" else {}
    client = await serve_app(app_for(make_settings(environment=environment, **overrides)))
    for path, status in (("/healthz", 200), ("/metrics", 200), ("/no/such", 404),
                         ("/test/stream", 200)):
        resp = await client.get(path)
        assert resp.status == status
        assert_security_headers(resp, hsts=hsts)
        assert "Content-Security-Policy" not in resp.headers  # CSP is for HTML
    resp = await client.post("/healthz")
    assert resp.status == 405
    assert_security_headers(resp, hsts=hsts)
    resp = await client.get("/test/stream")
    assert await resp.read() == b"data: one\n\n"


async def test_csp_on_html(serve_app: Callable[..., Any],
                           make_settings: Callable[..., Settings]) -> None:
    """HTML responses carry a Content-Security-Policy that forbids framing and foreign scripts."""
    client = await serve_app(app_for(make_settings()))
    resp = await client.get("/test/page")
    assert resp.status == 200
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert_security_headers(resp, hsts=False)
