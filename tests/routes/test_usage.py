"""GET /v1/usage and GET /v1/me through the real app on both backends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from luki_gateway.auth.principal import Principal
from luki_gateway.ratelimit.leases import LEASES
from luki_gateway.ratelimit.quotas import TOKEN_QUOTA

from ..conftest import bearer
from ..redis_server import RedisServer

LIMITS = {"enabled": True, "per_min": 5, "per_hour": 50, "max_streams": 3,
          "max_ws_per_user": 2, "daily_output_tokens": 1000}


async def test_usage_reports_windows_streams_and_tokens(gateway: Callable[..., Any],
                                                        backend: str) -> None:
    """After two charged calls, an open stream and 300 tokens, usage shows exactly that."""
    client = await gateway(ratelimit=LIMITS)
    for _ in range(2):
        assert (await client.post("/v1/auth/ticket", headers=bearer("alice"))).status == 200
    me = await client.get("/v1/me", headers=bearer("alice"))
    principal_id = (await me.json())["principal"]["id"]
    alice = Principal(id=principal_id, kind="jwt", subject="alice", scopes=frozenset())
    lease = await client.server.app[LEASES].acquire(alice, "sse")
    await client.server.app[TOKEN_QUOTA].charge(alice, 300)

    resp = await client.get("/v1/usage", headers=bearer("alice"))
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert body["principal"] == {"id": principal_id, "kind": "jwt", "subject": "alice"}
    policies = {p["policy"]: p for p in body["rate_limits"]["policies"]}
    assert policies["minute"]["limit"] == 5 and policies["minute"]["remaining"] == 3
    assert policies["hour"]["remaining"] == 48 and policies["hour"]["window_s"] == 3600
    assert 0 < policies["minute"]["reset_s"] <= 60
    assert body["streams"] == {"streams": {"limit": 3, "open": 1},
                               "ws": {"limit": 2, "open": 0}}
    tokens = body["tokens"]
    assert (tokens["daily_budget"], tokens["used"], tokens["remaining"]) == (1000, 300, 700)
    assert 0 < tokens["reset_s"] <= 86400
    assert resp.headers["X-RateLimit-Remaining"] == "3"
    await lease.release()


async def test_usage_is_not_charged(gateway: Callable[..., Any], backend: str) -> None:
    """Asking for usage ten times does not use up the five-per-minute budget."""
    client = await gateway(ratelimit=LIMITS)
    for _ in range(10):
        resp = await client.get("/v1/usage", headers=bearer("bob"))
        assert resp.status == 200
    body = await resp.json()
    assert [p["remaining"] for p in body["rate_limits"]["policies"]] == [5, 50]


async def test_usage_with_everything_off(gateway: Callable[..., Any], backend: str) -> None:
    """Test defaults: limits disabled, no caps, no token budget."""
    client = await gateway()
    body = await (await client.get("/v1/usage", headers=bearer("carol"))).json()
    assert body["rate_limits"] == {"enabled": False, "failure_mode": "open", "policies": []}
    assert body["streams"]["streams"] == {"limit": 0, "open": 0}
    assert body["tokens"] == {"daily_budget": 0}


async def test_me_shows_identity_scopes_and_limits(gateway: Callable[..., Any],
                                                   backend: str) -> None:
    """/v1/me returns the subject, its sorted scopes and the configured limits."""
    client = await gateway(ratelimit=LIMITS)
    resp = await client.get("/v1/me", headers=bearer("dave", ("events:publish", "chat:write")))
    assert resp.status == 200
    body = await resp.json()
    assert body["principal"]["subject"] == "dave"
    assert body["principal"]["kind"] == "jwt"
    assert body["principal"]["scopes"] == ["chat:write", "events:publish"]
    assert body["limits"]["per_min"] == 5 and body["limits"]["max_ws"] == 2


@pytest.mark.parametrize("path", ["/v1/usage", "/v1/me"])
async def test_no_or_bad_credentials_are_401(gateway: Callable[..., Any], backend: str,
                                              path: str) -> None:
    """Both routes need a principal; a missing, malformed or expired token is 401."""
    client = await gateway(ratelimit=LIMITS)
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"},
                    bearer("eve", ttl_s=-600)):
        resp = await client.get(path, headers=headers)
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "UNAUTHENTICATED"
    assert (await client.post(path, headers=bearer())).status == 405


@pytest.mark.parametrize("backend", ["redis"])
async def test_usage_answers_while_redis_is_down(gateway: Callable[..., Any], backend: str,
                                                 redis_server: RedisServer) -> None:
    """Redis killed: usage still answers 200, with unknown counts as null."""
    client = await gateway(ratelimit=LIMITS)
    redis_server.kill()
    try:
        resp = await client.get("/v1/usage", headers=bearer("frank"))
    finally:
        redis_server.start()
    assert resp.status == 200
    body = await resp.json()
    assert body["rate_limits"]["backend"] == "unavailable"
    assert all(p["remaining"] is None for p in body["rate_limits"]["policies"])
    assert body["streams"]["streams"]["open"] is None
    assert body["tokens"]["used"] is None
