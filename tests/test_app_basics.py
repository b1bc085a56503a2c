"""The real app answers the basics: liveness, errors in the one JSON shape, headers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


async def test_healthz_and_live_answer_ok(gateway: Callable[..., Any]) -> None:
    """/healthz and /live answer 200 with the security and trace headers."""
    client = await gateway()
    for path in ("/healthz", "/live"):
        resp = await client.get(path)
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        assert resp.headers["X-Request-ID"]
        assert resp.headers["traceparent"].startswith("00-")


async def test_unknown_route_is_json_404(gateway: Callable[..., Any]) -> None:
    """An unknown path answers the error shape with NOT_FOUND and the trace id."""
    client = await gateway()
    resp = await client.get("/no/such/thing", headers={"X-Request-ID": "abc-123"})
    assert resp.status == 404
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["error"]["code"] == "NOT_FOUND"
    assert body["error"]["trace_id"] == resp.headers["traceparent"].split("-")[1]
    assert resp.headers["X-Request-ID"] == "abc-123"


async def test_wrong_method_is_json_405_with_allow(gateway: Callable[..., Any]) -> None:
    """A known path with the wrong method answers METHOD_NOT_ALLOWED and Allow."""
    client = await gateway()
    resp = await client.delete("/healthz")
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert "GET" in resp.headers["Allow"]


async def test_ready_is_ready_after_startup(gateway: Callable[..., Any]) -> None:
    """/ready answers 200 once every cleanup context is open."""
    client = await gateway()
    resp = await client.get("/ready")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ready"
