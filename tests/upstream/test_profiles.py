"""deploy/profiles/*.toml load with load_settings and run as real gateways."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from luki_gateway.settings import DEFAULT_ROUTES, Settings, load_settings
from luki_gateway.upstream.routes import RouteTable

from ..conftest import bearer

PROFILES = Path(__file__).resolve().parents[2] / "deploy" / "profiles"


def profile(name: str, **overrides: Any) -> Settings:
    """A shipped profile, run in development mode with test defaults on top."""
    base: dict[str, Any] = {"environment": "development", "log_level": "WARNING",
                            "access_log": False,
                            "ratelimit": {"enabled": False, "max_streams": 0,
                                          "max_ws_per_user": 0}}
    return load_settings(config_path=str(PROFILES / name), environ={},
                         overrides={**base, **overrides})


@pytest.mark.parametrize("name", sorted(p.name for p in PROFILES.glob("*.toml")))
def test_every_profile_loads_as_shipped(name: str) -> None:
    """Each shipped file loads unchanged, and every route names a configured upstream."""
    settings = load_settings(config_path=str(PROFILES / name), environ={})
    assert settings.routes
    table = RouteTable.from_settings(settings)
    assert {r.upstream for r in table} <= set(settings.upstreams)


def test_luki_profile_is_the_default_route_set() -> None:
    """luki.toml spells out exactly the built-in LUKi routes."""
    settings = load_settings(config_path=str(PROFILES / "luki.toml"), environ={})
    assert settings.routes == DEFAULT_ROUTES


def test_ml_embedding_profile_routes() -> None:
    """/v1/embed is POST-only with embed:write, its own body limit and no retries."""
    settings = load_settings(config_path=str(PROFILES / "ml-embedding.toml"), environ={})
    embed = RouteTable.from_settings(settings).match("/v1/embed")
    assert embed is not None
    assert embed.upstream == "embedder"
    assert embed.methods == frozenset({"POST"})
    assert embed.scopes == {"*": ("embed:write",)}
    assert embed.max_body_bytes == 1_048_576
    assert embed.retries is False
    assert settings.upstream.critical == ("embedder",)


def test_assistant_profile_routes() -> None:
    """voice/agent/executor/memory each route to their own upstream."""
    settings = load_settings(config_path=str(PROFILES / "assistant.toml"), environ={})
    table = RouteTable.from_settings(settings)
    for prefix, upstream in (("/v1/voice/transcribe", "voice"), ("/v1/agent/run", "agent"),
                             ("/v1/executor/jobs", "executor"), ("/v1/memory/x", "memory")):
        route = table.match(prefix)
        assert route is not None
        assert route.upstream == upstream


async def test_ml_embedding_gateway_proxies_embed(gateway: Callable[..., Any],
                                                  upstream: Callable[..., Any]) -> None:
    """The embedding profile as a running gateway: scope, method and body checks hold."""
    app = web.Application()

    async def embed(request: web.Request) -> web.Response:
        """A fake embedder: one 3-vector per input text."""
        body = await request.json()
        return web.json_response({"data": [[0.1, 0.2, 0.3] for _ in body["input"]]})

    app.router.add_post("/v1/embed", embed)
    url = await upstream(app)
    client = await gateway(profile("ml-embedding.toml", upstreams={"embedder": url}))
    resp = await client.post("/v1/embed", json={"input": ["a", "b"]},
                             headers=bearer("svc", ("embed:write",)))
    assert resp.status == 200
    assert len((await resp.json())["data"]) == 2
    resp = await client.post("/v1/embed", json={"input": ["a"]},
                             headers=bearer("svc", ("embed:read",)))
    assert resp.status == 403
    resp = await client.get("/v1/embed", headers=bearer("svc", ("embed:write",)))
    assert resp.status == 405
    resp = await client.post("/v1/embed", data=io.BytesIO(b"x" * 1_048_577),
                             headers=bearer("svc", ("embed:write",)))
    assert resp.status == 413


async def test_assistant_gateway_starts_and_reports_health(
        gateway: Callable[..., Any], upstream: Callable[..., Any]) -> None:
    """The assistant profile runs; /health probes its four upstreams."""
    app = web.Application()

    async def health(request: web.Request) -> web.Response:
        """Always healthy."""
        return web.json_response({"status": "ok"})

    app.router.add_get("/health", health)
    url = await upstream(app)
    client = await gateway(profile("assistant.toml", upstreams={
        "voice": url, "agent": url, "executor": url, "memory": url}))
    body = await (await client.get("/health")).json()
    assert body["status"] == "healthy"
    assert set(body["services"]) == {"voice", "agent", "executor", "memory"}
