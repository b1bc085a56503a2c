"""read_json: malformed, wrong-typed and oversized bodies become VALIDATION_ERROR / 413."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from marshmallow import Schema, fields, validate

from luki_gateway.app import create_app
from luki_gateway.routes.access import PUBLIC, declare
from luki_gateway.settings import Settings
from luki_gateway.validation import MAX_FIELD_ERRORS, read_json


class EchoSchema(Schema):
    """A small body: a required non-empty message and an optional count."""

    message = fields.String(required=True, validate=validate.Length(min=1))
    count = fields.Integer(load_default=1)


async def echo(request: web.Request) -> web.Response:
    """Test route: validate the body and echo what was loaded."""
    return web.json_response(await read_json(request, EchoSchema))


async def echo_small(request: web.Request) -> web.Response:
    """Test route with its own 16-byte body limit."""
    return web.json_response(await read_json(request, EchoSchema, max_bytes=16))


async def start(aiohttp_client: Callable[..., Any], settings: Settings) -> TestClient[Any, Any]:
    """The real app plus two body-reading test routes, on a real socket."""
    app = create_app(settings)
    declare(app, app.router.add_post("/test/echo", echo), PUBLIC)
    declare(app, app.router.add_post("/test/echo-small", echo_small), PUBLIC)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    return client


async def test_valid_body_is_loaded(aiohttp_client: Callable[..., Any],
                                    make_settings: Callable[..., Settings]) -> None:
    """A valid object is loaded with schema defaults applied."""
    client = await start(aiohttp_client, make_settings())
    resp = await client.post("/test/echo", json={"message": "hi"})
    assert resp.status == 200
    assert await resp.json() == {"message": "hi", "count": 1}


async def test_malformed_bodies_are_400(aiohttp_client: Callable[..., Any],
                                        make_settings: Callable[..., Settings]) -> None:
    """Broken JSON, empty bodies, bad UTF-8, non-objects and Python's NaN/Infinity (not
    JSON: forwarded, they break a strict upstream) answer 400 VALIDATION_ERROR."""
    client = await start(aiohttp_client, make_settings())
    for body in (b'{"message": ', b"", b"   ", b"\xff\xfe{}", b"[1, 2]", b'"text"', b"null",
                 b"[" * 100_000, b'{"message": "hi", "context": {"x": NaN}}',
                 b'{"message": "hi", "context": {"x": -Infinity}}',
                 b'{"message": "hi", "context": {"x": 1e999}}'):
        resp = await client.post("/test/echo", data=body,
                                 headers={"Content-Type": "application/json"})
        assert resp.status == 400, body[:20]
        error = (await resp.json())["error"]
        assert error["code"] == "VALIDATION_ERROR"
        assert error["trace_id"] == resp.headers["traceparent"].split("-")[1]
    resp = await client.post("/test/echo", data=b'{"message": ')
    assert (await resp.json())["error"]["details"] == {"line": 1, "column": 13}


async def test_lone_surrogate_escapes_are_400_and_pairs_are_text(
        aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings]) -> None:
    """A string (value or key) with an unpaired \\ud800-\\udfff escape cannot be UTF-8: 400
    VALIDATION_ERROR, never a 500 later; a proper pair is one character and passes."""
    client = await start(aiohttp_client, make_settings())
    for body in (rb'{"message": "\ud800"}', rb'{"message": "a\uDFFFb"}',
                 rb'{"message": "hi", "x": [{"\udc00": 1}]}',
                 rb'{"message": "\ude00\ud83d"}'):
        resp = await client.post("/test/echo", data=body,
                                 headers={"Content-Type": "application/json"})
        assert resp.status == 400, body
        error = (await resp.json())["error"]
        assert error["code"] == "VALIDATION_ERROR"
        assert error["message"].startswith("request body is not valid JSON: lone surrogate")
    for body, message in ((rb'{"message": "\ud83d\ude00"}', "\U0001f600"),
                          (rb'{"message": "\\ud800"}', "\\ud800")):  # an escaped backslash
        resp = await client.post("/test/echo", data=body,
                                 headers={"Content-Type": "application/json"})
        assert resp.status == 200, body
        assert (await resp.json())["message"] == message


async def test_schema_failures_are_422_with_fields(aiohttp_client: Callable[..., Any],
                                                   make_settings: Callable[..., Settings]
                                                   ) -> None:
    """Missing, wrong-typed and unknown fields answer 422 naming each field."""
    client = await start(aiohttp_client, make_settings())
    resp = await client.post("/test/echo", json={"message": 5, "count": "many", "x": 1})
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert set(error["details"]["fields"]) == {"message", "count", "x"}
    resp = await client.post("/test/echo", json={})
    assert (await resp.json())["error"]["details"]["fields"] == {
        "message": ["Missing data for required field."]}


async def test_field_errors_are_bounded(aiohttp_client: Callable[..., Any],
                                        make_settings: Callable[..., Settings]) -> None:
    """Thousands of unknown keys produce a bounded error body."""
    client = await start(aiohttp_client, make_settings())
    body = {"message": "hi", **{f"k{i}": i for i in range(5000)}}
    resp = await client.post("/test/echo", json=body)
    assert resp.status == 422
    field_errors = (await resp.json())["error"]["details"]["fields"]
    assert len(field_errors) == MAX_FIELD_ERRORS + 1
    assert "_truncated" in field_errors


async def test_oversized_bodies_are_413(aiohttp_client: Callable[..., Any],
                                        make_settings: Callable[..., Settings]) -> None:
    """A body over the route's max_bytes or the global limit answers 413, chunked or not."""
    client = await start(aiohttp_client, make_settings(max_body_bytes=1024))
    resp = await client.post("/test/echo-small", json={"message": "x" * 100})
    assert resp.status == 413
    assert (await resp.json())["error"]["details"] == {"max_bytes": 16}

    async def chunks() -> Any:
        for _ in range(8):
            yield b'{"message": "' + b"x" * 200 + b'"}'

    resp = await client.post("/test/echo", data=chunks())
    assert resp.status == 413
    error = (await resp.json())["error"]
    assert error["code"] == "PAYLOAD_TOO_LARGE"
    assert error["details"] == {"max_bytes": 1024}
