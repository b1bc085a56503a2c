"""Log redaction: credentials sent by clients never appear in any log line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from luki_gateway.app import create_app
from luki_gateway.log import REDACTED, configure_logging, redact_text
from luki_gateway.routes.access import PUBLIC, declare
from luki_gateway.settings import Settings, load_settings

JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSJ9."
       "c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU")
API_KEY = "sk_live_Zq8wX3kP9mN2vB7cL4tR"
COOKIE = "session=cookievalue0123456789"
QUERY_TOKEN = "querytokenvalue987654321"
QUERY_TICKET = "ticketvalue13579135791357"
BASIC = "dXNlcjpwYXNzd29yZHBhc3N3b3Jk"
SECRETS = (JWT, API_KEY, "cookievalue0123456789", QUERY_TOKEN, QUERY_TICKET, BASIC,
           "c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU")


async def chatty(request: web.Request) -> web.Response:
    """Test route: logs everything a careless handler might (headers, query, a failure)."""
    log = structlog.get_logger("luki.test")
    log.info("incoming", headers=dict(request.headers), query=request.query_string,
             url=str(request.url))
    log.info(f"raw line with {request.headers.get('Authorization')} and {request.path_qs}")
    logging.getLogger("aiohttp.web").warning("stdlib line: %s Cookie: %s", request.path_qs,
                                             request.headers.get("Cookie"))
    try:
        raise ValueError(f"bad credential {request.headers.get('X-API-Key')}")
    except ValueError:
        log.exception("handler failed")
    return web.Response(text="ok")


def assert_no_secret(text: str) -> None:
    """None of the test secrets occurs in ``text``."""
    for secret in SECRETS:
        assert secret not in text, secret


async def test_no_secret_reaches_the_log(serve_app: Callable[..., Any],
                                         make_settings: Callable[..., Settings],
                                         captured_logs: Callable[[], list[dict[str, Any]]]
                                         ) -> None:
    """Authorization, Cookie, API keys, JWTs, ?token= and ?ticket= are masked on every line."""
    app = create_app(make_settings(access_log=True))
    declare(app, app.router.add_get("/test/chatty", chatty), PUBLIC)
    client = await serve_app(app)
    path = f"/test/chatty?token={QUERY_TOKEN}&ticket={QUERY_TICKET}&page=2"
    for auth in (f"Bearer {JWT}", f"Basic {BASIC}", f"Bearer {API_KEY}"):
        resp = await client.get(path, headers={"Authorization": auth, "Cookie": COOKIE,
                                               "X-API-Key": API_KEY})
        assert resp.status == 200
    resp = await client.get(f"/no/such/{JWT}?token={QUERY_TOKEN}")
    assert resp.status == 404
    lines = captured_logs()
    assert len(lines) >= 16
    text = json.dumps(lines)
    assert_no_secret(text)
    assert REDACTED in text
    assert "page=2" in text  # only credentials are masked
    incoming = next(line for line in lines if line["event"] == "incoming")
    assert incoming["headers"]["Authorization"] == REDACTED
    assert incoming["headers"]["Cookie"] == REDACTED
    assert any(line.get("logger") == "aiohttp.web" for line in lines)


def test_console_renderer_redacts_too() -> None:
    """The development console format masks the same secrets."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging(load_settings(environ={}, overrides={"log_format": "console"}), stream)
    try:
        note = f"key {API_KEY} url /x?ticket={QUERY_TICKET}"
        structlog.get_logger("luki.test").warning("token", authorization=f"Bearer {JWT}",
                                                  note=note)
        logging.getLogger("some.lib").warning("Authorization: Bearer %s", JWT)
    finally:
        structlog.reset_defaults()
        root.handlers[:], root.level = saved
    out = stream.getvalue()
    assert out.count(REDACTED) >= 4
    assert_no_secret(out)


def test_redact_text_keeps_ordinary_text() -> None:
    """Ordinary words, ids and query values pass unchanged."""
    for text in ("GET /v1/chat?page=2&sort=asc", "user alice sent 3 tokens",
                 "request_id=abc-123 token count 7", "skip_this_word"):
        assert redact_text(text) == text


def test_format_follows_environment() -> None:
    """log_format auto: JSON lines outside development, the console format in development."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    outputs = {}
    try:
        for environment in ("production", "development"):
            stream = io.StringIO()
            configure_logging(Settings(environment=environment), stream)
            structlog.get_logger("luki.test").info("hello", n=1)
            outputs[environment] = stream.getvalue().strip()
    finally:
        structlog.reset_defaults()
        root.handlers[:], root.level = saved
    line = json.loads(outputs["production"])
    assert (line["event"], line["n"], line["level"]) == ("hello", 1, "info")
    assert line["timestamp"].endswith("Z")
    assert not outputs["development"].startswith("{")
    assert "hello" in outputs["development"] and "n=1" in outputs["development"]


def test_non_string_values_are_redacted(captured_logs: Callable[[], list[dict[str, Any]]]
                                        ) -> None:
    """Exceptions, bytes, URLs and sets passed as values are masked like strings."""
    from yarl import URL

    structlog.get_logger("luki.test").warning(
        "odd values", error=ValueError(f"bad token {JWT}"), body=f"token={QUERY_TOKEN}".encode(),
        url=URL(f"http://h/x?ticket={QUERY_TICKET}"), keys={API_KEY}, count=3, ok=True)
    line = captured_logs()[-1]
    assert_no_secret(json.dumps(line))
    assert line["count"] == 3 and line["ok"] is True
    assert line["url"] == f"http://h/x?ticket={REDACTED}"
