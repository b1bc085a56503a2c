"""Limits through the real routes: proxied route cost, event publishing, SSE stream caps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from luki_gateway.auth.principal import Principal
from luki_gateway.errors import RateLimitExceeded
from luki_gateway.ratelimit.leases import LEASES

from ..conftest import bearer
from ..redis_server import RedisServer


def limits(**extra: Any) -> dict[str, Any]:
    """[ratelimit] overrides that turn limits on."""
    return {"enabled": True, "per_min": 12, "per_hour": 1000, "max_streams": 0,
            "max_ws_per_user": 0, **extra}


async def test_proxied_route_cost_and_refusals_never_reach_upstream(
        gateway: Callable[..., Any], upstream: Callable[..., Any], backend: str) -> None:
    """/v1/reports costs 5: two calls reach the upstream, the third is 429 at the gateway."""
    hits: list[str] = []

    async def report(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"report": "ok"})

    reports = web.Application()
    reports.router.add_get("/v1/reports/{name}", report)
    url = await upstream(reports)
    client = await gateway(upstreams={"reports": url}, ratelimit=limits())
    headers = bearer("alice", ("reports:read",))
    statuses = []
    for _ in range(3):
        resp = await client.get("/v1/reports/weekly", headers=headers)
        await resp.read()
        statuses.append(resp.status)
    assert statuses == [200, 200, 429]
    assert hits == ["/v1/reports/weekly"] * 2
    assert resp.headers["X-RateLimit-Remaining"] == "2"


@pytest.mark.parametrize("backend", ["redis"])
async def test_publish_fails_closed_while_redis_is_down(
        gateway: Callable[..., Any], redis_server: RedisServer, backend: str) -> None:
    """POST /v1/events/publish is refused (503) while the limiter cannot decide."""
    client = await gateway(ratelimit=limits(per_min=1000))
    headers = bearer("svc", ("events:publish",))
    body = {"channel": "broadcast:news", "data": {"n": 1}}
    ok = await client.post("/v1/events/publish", json=body, headers=headers)
    assert ok.status < 300
    redis_server.kill()
    try:
        refused = await client.post("/v1/events/publish", json=body, headers=headers)
        assert refused.status == 503
        assert refused.headers["Retry-After"] == "1"
    finally:
        redis_server.start()


async def test_sse_subscriptions_are_capped_per_principal(
        gateway: Callable[..., Any], backend: str) -> None:
    """With max_streams = 1 a second SSE subscription is 429 kind=concurrency until the
    first one closes."""
    client = await gateway(ratelimit=limits(per_min=1000, max_streams=1))
    headers = {**bearer("alice"), "Accept": "text/event-stream"}
    path = "/v1/events?channel=broadcast:news"
    first = await client.get(path, headers=headers)
    assert first.status == 200
    second = await client.get(path, headers=headers)
    assert second.status == 429
    assert (await second.json())["error"]["details"]["kind"] == "concurrency"
    first.close()
    async with asyncio.timeout(2):
        while True:
            third = await client.get(path, headers=headers)
            if third.status == 200:
                break
            await third.read()
            await asyncio.sleep(0.05)  # the release runs in the closed stream's handler
    third.close()


async def test_app_heartbeat_keeps_leases_alive_past_their_ttl(
        gateway: Callable[..., Any], backend: str) -> None:
    """The app's heartbeat task refreshes held leases: after 3 TTLs the lease still counts."""
    # TTL 1 s: a refresh every 0.33 s survives the event-loop stalls of a loaded CI machine.
    client = await gateway(ratelimit=limits(max_streams=1, lease_ttl_s=1.0))
    app = client.server.app
    alice = Principal(id="jwt:alice", kind="jwt", subject="alice", scopes=frozenset())
    lease = await app[LEASES].acquire(alice, "sse")
    await asyncio.sleep(3.0)  # three TTLs: without the heartbeat the lease would be gone
    assert await app[LEASES].open_count(alice, "streams") == 1
    with pytest.raises(RateLimitExceeded):
        await app[LEASES].acquire(alice, "sse")
    await lease.release()
    assert await app[LEASES].open_count(alice, "streams") == 0


async def _usage_open(client: Any, headers: dict[str, str]) -> Any:
    resp = await client.get("/v1/usage", headers=headers)
    return (await resp.json())["streams"]["streams"]["open"]


@pytest.mark.parametrize("backend", ["redis"])
async def test_open_streams_count_again_after_redis_lost_their_leases(
        gateway: Callable[..., Any], redis_server: RedisServer, backend: str) -> None:
    """Redis restarted empty (or an outage outlived the TTL): the heartbeat puts the open
    streams' leases back, so the cap still holds instead of admitting two more."""
    client = await gateway(ratelimit=limits(per_min=1000, max_streams=2, lease_ttl_s=1.0))
    headers = {**bearer("alice"), "Accept": "text/event-stream"}
    path = "/v1/events?channel=broadcast:news"
    streams = [await client.get(path, headers=headers) for _ in range(2)]
    assert [s.status for s in streams] == [200, 200]
    redis_server.restart()
    await asyncio.sleep(1.5)  # a few heartbeats (every TTL / 3), and past the TTL
    assert await _usage_open(client, headers) == 2
    extra = await client.get(path, headers=headers)
    assert extra.status == 429
    for stream in streams:
        stream.close()


@pytest.mark.parametrize("backend", ["redis"])
async def test_a_stream_admitted_while_redis_was_down_counts_once_it_is_back(
        gateway: Callable[..., Any], redis_server: RedisServer, backend: str) -> None:
    """A stream let in fail-open during an outage holds its slot once Redis answers again,
    and gives it back when it closes."""
    client = await gateway(ratelimit=limits(per_min=1000, max_streams=1, lease_ttl_s=1.0))
    headers = {**bearer("alice"), "Accept": "text/event-stream"}
    path = "/v1/events?channel=broadcast:news"
    redis_server.kill()
    try:
        admitted = await client.get(path, headers=headers)
        assert admitted.status == 200  # failure_mode "open"
    finally:
        redis_server.start()
    await asyncio.sleep(1.5)  # the back-off has passed and a heartbeat has run
    assert await _usage_open(client, headers) == 1
    extra = await client.get(path, headers=headers)
    assert extra.status == 429
    admitted.close()
    async with asyncio.timeout(2):
        while True:
            if await _usage_open(client, headers) == 0:
                break
            await asyncio.sleep(0.05)  # the release runs in the closed stream's handler
