"""Shared fixtures: settings, the real app, real upstream servers and a private Redis."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from luki_gateway.app import create_app
from luki_gateway.settings import SECTIONS, UPSTREAM_ENV, AuthSettings, Settings, load_settings

from .redis_server import RedisServer

# Environment variables that must not leak from the developer's shell into tests: every
# name a setting reads (derived, so settings added later are covered too).
_ISOLATED_ENV = ("LUKI_CONFIG", *UPSTREAM_ENV, *(
    f.metadata["env"] for cls in (Settings, *SECTIONS.values())
    for f in dataclasses.fields(cls) if f.metadata.get("env")))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees only the environment it sets itself."""
    for name in _ISOLATED_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the whole session (fails, never skips, if not installed)."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """URL of the private Redis, emptied and running for this test."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    if redis_server.paused:
        redis_server.resume()
    redis_server.flushall()
    yield redis_server.url
    if redis_server.paused:
        redis_server.resume()
    if redis_server.proc is None:
        redis_server.start()


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    """Run a test once with the in-memory twins and once with real Redis."""
    param: str = request.param
    return param


@pytest.fixture
def make_settings(backend_redis_url: str) -> Callable[..., Settings]:
    """Build settings in the TOML shape on top of test defaults (auth and limits as given)."""

    def build(**overrides: Any) -> Settings:
        # Rate limits and stream caps off unless a test turns them on (ratelimit tests do).
        base: dict[str, Any] = {
            "log_level": "WARNING",
            "access_log": False,
            "ratelimit": {"enabled": False, "max_streams": 0, "max_ws_per_user": 0},
        }
        if backend_redis_url:
            base["redis_url"] = backend_redis_url
        merged = {**base, **overrides}
        return load_settings(environ={}, overrides=merged)

    return build


@pytest.fixture
def backend_redis_url(request: pytest.FixtureRequest) -> str:
    """The Redis URL for this test's backend ('' = in-memory); only starts Redis if asked."""
    if "backend" in request.fixturenames and request.getfixturevalue("backend") == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    return ""


class ServedLikeServe(TestServer):
    """The app served as `serve` runs it (web.run_app): a client that leaves does not
    cancel the handler, as aiohttp's test server would (it forces handler_cancellation and
    ignores a server_kwargs that says otherwise), so the gateway's own watch is tested."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return web.AppRunner(self.app, **{**kwargs, "handler_cancellation": False})


@pytest.fixture
async def gateway(aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings]
                  ) -> Callable[..., Any]:
    """Start the real app from create_app on a real socket; returns a TestClient factory."""

    async def start(settings: Settings | None = None, **overrides: Any) -> TestClient[Any, Any]:
        app: web.Application = create_app(settings or make_settings(**overrides))
        client: TestClient[Any, Any] = await aiohttp_client(ServedLikeServe(app))
        return client

    return start


@pytest.fixture
async def serve_app(aiohttp_client: Callable[..., Any]
                    ) -> Callable[[web.Application], Awaitable[TestClient[Any, Any]]]:
    """Start an app already built (create_app plus test-only routes) on a real socket."""

    async def start(app: web.Application) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = await aiohttp_client(ServedLikeServe(app))
        return client

    return start


@pytest.fixture
def captured_logs() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Route every log line (structlog and stdlib) through our config as JSON into a buffer.

    Yields a function returning the lines parsed so far; logging is reset afterwards.
    """
    import io
    import json
    import logging

    import structlog

    from luki_gateway.log import configure_logging

    buffer = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("aiohttp.access").disabled)
    configure_logging(load_settings(environ={}, overrides={"log_level": "DEBUG",
                                                           "log_format": "json"}), buffer)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]

    yield lines
    structlog.reset_defaults()
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("aiohttp.access").disabled = saved[2]


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Any]) -> Callable[..., Any]:
    """Start a real upstream aiohttp server from an Application; returns its base URL."""

    async def start(app: web.Application) -> str:
        server = await aiohttp_server(app)
        return str(server.make_url("")).rstrip("/")

    return start


DEV_JWT_SECRET = AuthSettings().jwt_secret


def make_token(sub: str = "alice", scopes: tuple[str, ...] = ("chat:write",),
               ttl_s: int = 3600, secret: str = DEV_JWT_SECRET, **claims: Any) -> str:
    """A dev HS256 JWT as the gateway's default (non-production) settings accept it."""
    import time

    import jwt

    now = int(time.time())
    payload = {"sub": sub, "scope": " ".join(scopes), "iat": now, "exp": now + ttl_s, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


def bearer(sub: str = "alice", scopes: tuple[str, ...] = ("chat:write",), **kw: Any
           ) -> dict[str, str]:
    """Authorization header with a dev JWT for ``sub`` holding ``scopes``."""
    return {"Authorization": f"Bearer {make_token(sub, scopes, **kw)}"}


def closed_port_url() -> str:
    """A URL on a local port nothing listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"
