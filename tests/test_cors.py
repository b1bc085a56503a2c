"""CORS through aiohttp-cors: preflight for allowed and refused origins, per environment."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

ALLOWED = "https://app.example"
PREFLIGHT = {"Access-Control-Request-Method": "GET",
             "Access-Control-Request-Headers": "Authorization, Content-Type"}


async def test_preflight_from_allowed_origin(gateway: Callable[..., Any]) -> None:
    """An allowed origin gets the preflight answer with methods, headers and credentials."""
    client = await gateway(cors_origins=[ALLOWED, "https://other.example"])
    resp = await client.options("/healthz", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    assert "GET" in resp.headers["Access-Control-Allow-Methods"]
    allowed_headers = resp.headers["Access-Control-Allow-Headers"].upper()
    assert "AUTHORIZATION" in allowed_headers
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_preflight_from_refused_origin(gateway: Callable[..., Any]) -> None:
    """Another origin's preflight is refused in the JSON error shape, with no CORS grant."""
    client = await gateway(cors_origins=[ALLOWED])
    resp = await client.options("/healthz", headers={"Origin": "https://evil.example",
                                                     **PREFLIGHT})
    assert resp.status == 403
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert (await resp.json())["error"]["code"] == "FORBIDDEN"


async def test_actual_request_gets_grant_and_exposed_headers(gateway: Callable[..., Any]) -> None:
    """A cross-origin GET from an allowed origin may read X-Request-ID; others get no grant."""
    client = await gateway(cors_origins=[ALLOWED])
    resp = await client.get("/healthz", headers={"Origin": ALLOWED})
    assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "X-Request-ID" in resp.headers["Access-Control-Expose-Headers"]
    resp = await client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert resp.status == 200
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_development_default_allows_any_origin(gateway: Callable[..., Any]) -> None:
    """With no CORS_ORIGINS, development allows every origin (without credentials)."""
    client = await gateway()
    resp = await client.options("/metrics", headers={"Origin": "http://localhost:5173",
                                                     **PREFLIGHT})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] in ("*", "http://localhost:5173")
    assert "Access-Control-Allow-Credentials" not in resp.headers


async def test_staging_default_allows_no_origin(gateway: Callable[..., Any]) -> None:
    """With no CORS_ORIGINS outside development, no origin is granted anything."""
    client = await gateway(environment="staging")
    resp = await client.options("/healthz", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert resp.status in (403, 405)
    assert "Access-Control-Allow-Origin" not in resp.headers
    resp = await client.get("/healthz", headers={"Origin": ALLOWED})
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_upstream_cors_and_security_headers_do_not_override_the_gateway(
        gateway: Callable[..., Any], aiohttp_server: Callable[..., Any]) -> None:
    """An upstream with its own CORS (FastAPI's middleware, say) and laxer security
    headers: the gateway's policy answers (the response is not dropped, as it was when
    aiohttp-cors found a grant already there), and a refused origin gets no grant."""
    async def lax(request: web.Request) -> web.Response:
        return web.json_response({"ok": True}, headers={
            "Access-Control-Allow-Origin": "*", "Access-Control-Allow-Credentials": "true",
            "X-Frame-Options": "ALLOWALL", "Strict-Transport-Security": "max-age=0"})

    app = web.Application()
    app.router.add_get("/v1/elr/{tail:.*}", lax)
    upstream = await aiohttp_server(app)
    client = await gateway(environment="staging", cors_origins=[ALLOWED],
                           auth={"enabled": False},
                           upstreams={"memory": str(upstream.make_url("")).rstrip("/")})
    resp = await client.get("/v1/elr/items", headers={"Origin": ALLOWED})
    assert resp.status == 200 and await resp.json() == {"ok": True}
    assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    assert "Origin" in resp.headers["Vary"]
    resp = await client.get("/v1/elr/items", headers={"Origin": "https://evil.example"})
    assert resp.status == 200
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert "Access-Control-Allow-Credentials" not in resp.headers


async def test_errors_carry_the_grant_for_an_allowed_origin(gateway: Callable[..., Any]
                                                            ) -> None:
    """A 404 (no route) or 405 answered to an allowed origin is readable by its page;
    another origin still gets no grant."""
    client = await gateway(cors_origins=[ALLOWED])
    for method, path, status in (("GET", "/v1/nowhere", 404), ("DELETE", "/healthz", 405)):
        resp = await client.request(method, path, headers={"Origin": ALLOWED})
        assert resp.status == status
        assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert "X-Request-ID" in resp.headers["Access-Control-Expose-Headers"]
        assert (await resp.json())["error"]["code"] in ("NOT_FOUND", "METHOD_NOT_ALLOWED")
        resp = await client.request(method, path, headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in resp.headers
