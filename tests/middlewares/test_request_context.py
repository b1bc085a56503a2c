"""Request identity: X-Request-ID accepted when sane, W3C traceparent parsed or minted."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import structlog
from aiohttp import web

from luki_gateway.app import create_app
from luki_gateway.routes.access import PUBLIC, declare
from luki_gateway.settings import Settings

from ..conftest import bearer

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
HEX32 = re.compile(r"[0-9a-f]{32}")


async def test_sane_request_ids_are_echoed(gateway: Callable[..., Any]) -> None:
    """Ids of [A-Za-z0-9._-] up to 128 characters come back unchanged."""
    client = await gateway()
    for rid in ("abc-123", "A.b_c-9", "x" * 128):
        resp = await client.get("/healthz", headers={"X-Request-ID": rid})
        assert resp.headers["X-Request-ID"] == rid


@pytest.mark.parametrize("rid", ["x" * 129, "has space", "<script>", "a/b", "ü-nicode", "a\tb",
                                 "abc;rm"])
async def test_insane_request_ids_are_replaced(gateway: Callable[..., Any], rid: str) -> None:
    """Too long or odd characters: a fresh id is generated instead of echoing the input."""
    client = await gateway()
    resp = await client.get("/healthz", headers={"X-Request-ID": rid})
    assert resp.headers["X-Request-ID"] != rid
    assert HEX32.fullmatch(resp.headers["X-Request-ID"])


async def test_missing_request_id_is_generated(gateway: Callable[..., Any]) -> None:
    """Without X-Request-ID each response carries a new one."""
    client = await gateway()
    first = (await client.get("/healthz")).headers["X-Request-ID"]
    second = (await client.get("/healthz")).headers["X-Request-ID"]
    assert HEX32.fullmatch(first) and first != second


async def test_valid_traceparent_continues_the_trace(gateway: Callable[..., Any]) -> None:
    """A valid traceparent keeps its trace id and flags; our span replaces the parent id."""
    client = await gateway()
    resp = await client.get("/nope", headers={"traceparent": f"00-{TRACE}-{PARENT}-00"})
    version, trace_id, span_id, flags = resp.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE, "00")
    assert span_id != PARENT and re.fullmatch(r"[0-9a-f]{16}", span_id)
    assert (await resp.json())["error"]["trace_id"] == TRACE


async def test_future_traceparent_version_is_read(gateway: Callable[..., Any]) -> None:
    """A later version with extra fields: its first four fields are still understood."""
    client = await gateway()
    resp = await client.get("/healthz", headers={"traceparent": f"01-{TRACE}-{PARENT}-01-x-y"})
    assert resp.headers["traceparent"].startswith(f"00-{TRACE}-")


@pytest.mark.parametrize("header", [
    f"ff-{TRACE}-{PARENT}-01",                 # forbidden version
    f"00-{'0' * 32}-{PARENT}-01",              # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",               # all-zero parent id
    f"00-{TRACE[:-1]}-{PARENT}-01",            # short trace id
    f"00-{TRACE}-{PARENT}",                    # no flags
    f"00-{TRACE.replace('4', 'g')}-{PARENT}-01",  # not hex
    f"00-{TRACE.upper()}-{PARENT}-01",         # upper case is not allowed
    f"00-{TRACE}-{PARENT}-01-extra",           # version 00 has exactly four fields
    "garbage",
])
async def test_invalid_traceparent_starts_a_new_trace(gateway: Callable[..., Any],
                                                      header: str) -> None:
    """An invalid traceparent is ignored: a new trace id, in the header and the error body."""
    client = await gateway()
    resp = await client.get("/nope", headers={"traceparent": header})
    trace_id = resp.headers["traceparent"].split("-")[1]
    assert trace_id != TRACE and HEX32.fullmatch(trace_id)
    assert (await resp.json())["error"]["trace_id"] == trace_id


async def logs_something(request: web.Request) -> web.Response:
    """Test route: a handler's own log line."""
    structlog.get_logger("luki.test").info("handler says hi")
    return web.Response(text="ok")


async def test_trace_and_request_id_ride_on_every_log_line(
        serve_app: Callable[..., Any], make_settings: Callable[..., Settings],
        captured_logs: Callable[[], list[dict[str, Any]]]) -> None:
    """The handler's line and the access line carry the request id and trace id of the response."""
    app = create_app(make_settings(access_log=True))
    declare(app, app.router.add_get("/test/log", logs_something), PUBLIC)
    client = await serve_app(app)
    for rid in ("req-one", "req-two"):
        resp = await client.get("/test/log", headers={
            "X-Request-ID": rid, "traceparent": f"00-{TRACE}-{PARENT}-01"})
        assert resp.status == 200
    lines = captured_logs()
    for rid in ("req-one", "req-two"):
        mine = [line for line in lines if line.get("request_id") == rid]
        assert {line["event"] for line in mine} == {"handler says hi", "request"}
        assert all(line["trace_id"] == TRACE for line in mine)
    access = [line for line in lines if line["event"] == "request"]
    assert access[0]["route"] == "/test/log" and access[0]["status"] == 200
    assert {"method", "path", "bytes", "duration_ms", "principal"} <= set(access[0])


async def test_access_line_names_the_principal(
        gateway: Callable[..., Any], captured_logs: Callable[[], list[dict[str, Any]]]) -> None:
    """Once auth knows the caller, the access line carries it (never the credential)."""
    client = await gateway(access_log=True)
    resp = await client.get("/v1/me", headers=bearer("alice", ("chat:write",)))
    assert resp.status == 200
    resp = await client.get("/v1/me")
    assert resp.status == 401
    access = [line for line in captured_logs() if line["event"] == "request"]
    assert [(line["route"], line["status"]) for line in access] == [("/v1/me", 200),
                                                                     ("/v1/me", 401)]
    assert "alice" in access[0]["principal"]
    assert access[1]["principal"] is None
