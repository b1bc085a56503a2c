"""The rate-limit middleware through the real app: headers, 429s, policies, faults, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from luki_gateway.app import create_app
from luki_gateway.auth.principal import Principal, principal_of
from luki_gateway.ratelimit.leases import LEASES
from luki_gateway.ratelimit.limiter import LIMITER
from luki_gateway.ratelimit.memory import MemoryLimiter
from luki_gateway.ratelimit.quotas import TOKEN_QUOTA
from luki_gateway.routes.access import RouteAccess, declare
from luki_gateway.settings import Settings

from ..conftest import bearer
from ..redis_server import RedisServer
from .conftest import FakeClock

Client = TestClient[Any, Any]
ClientFactory = Callable[..., Any]


async def ping(request: web.Request) -> web.Response:
    """A private test route that does nothing."""
    return web.json_response({"ok": True})


async def stream(request: web.Request) -> web.StreamResponse:
    """A streamed (SSE-like) test route: headers go out before the handler returns."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"data: hi\n\n")
    return response


def limited(per_min: int = 5, per_hour: int = 100, **extra: Any) -> dict[str, Any]:
    """TOML-shaped overrides that turn rate limits on."""
    return {"ratelimit": {"enabled": True, "per_min": per_min, "per_hour": per_hour,
                          "max_streams": 0, "max_ws_per_user": 0, **extra}}


@pytest.fixture
async def limited_gateway(aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
                          ) -> AsyncIterator[Callable[..., Any]]:
    """Start create_app plus test-only routes (ping cost 1, report cost 5, publish, stream)."""

    async def start(**overrides: Any) -> Client:
        app = create_app(make_settings(**overrides))
        declare(app, app.router.add_get("/v1/test/ping", ping), RouteAccess())
        declare(app, app.router.add_get("/v1/test/report", ping), RouteAccess(cost=5))
        declare(app, app.router.add_post("/v1/test/publish", ping),
                RouteAccess(scopes={"POST": ("events:publish",)}))
        declare(app, app.router.add_get("/v1/test/free", ping), RouteAccess(rate_limited=False))
        declare(app, app.router.add_get("/v1/test/stream", stream), RouteAccess())
        client: Client = await aiohttp_client(app)
        return client

    yield start


async def test_allowed_response_carries_every_header(limited_gateway: Callable[..., Any],
                                                     backend: str) -> None:
    """A limited route answers with RateLimit-Policy, RateLimit and X-RateLimit-*."""
    client = await limited_gateway(**limited(5, 100))
    resp = await client.get("/v1/test/ping", headers=bearer("alice"))
    assert resp.status == 200
    assert resp.headers["RateLimit-Policy"] == '"minute";q=5;w=60, "hour";q=100;w=3600'
    assert resp.headers["RateLimit"].startswith('"minute";r=4;t=')
    assert '"hour";r=99;t=' in resp.headers["RateLimit"]
    assert resp.headers["X-RateLimit-Limit"] == "5"
    assert resp.headers["X-RateLimit-Remaining"] == "4"
    assert 59 <= int(resp.headers["X-RateLimit-Reset"]) <= 60


@pytest.mark.parametrize("backend", ["memory"])
async def test_reset_and_retry_after_never_exceed_the_window(
        limited_gateway: Callable[..., Any], backend: str) -> None:
    """A fresh window resets in exactly its length: float error in the memory limiter's
    arithmetic (at a clock of 1000.1, 1000.1 + 3600 - 1000.1 > 3600) must not round the
    headers up to a reset (or Retry-After) one second longer than the window."""
    client = await limited_gateway(**limited(5, 1))
    limiter = client.server.app[LIMITER]
    assert isinstance(limiter, MemoryLimiter)
    limiter.clock = FakeClock(1000.1)
    resp = await client.get("/v1/test/ping", headers=bearer("alice"))
    assert resp.status == 200
    assert resp.headers["RateLimit"] == '"hour";r=0;t=3600, "minute";r=4;t=60'
    assert resp.headers["X-RateLimit-Reset"] == "3600"
    refused = await client.get("/v1/test/ping", headers=bearer("alice"))
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "3600"


async def test_over_the_limit_is_429_with_retry_after_and_policy(
        limited_gateway: Callable[..., Any], backend: str) -> None:
    """The sixth request of 5/min is 429 RATE_LIMIT_EXCEEDED naming the minute policy."""
    client = await limited_gateway(**limited(5, 100))
    for _ in range(5):
        assert (await client.get("/v1/test/ping", headers=bearer("alice"))).status == 200
    resp = await client.get("/v1/test/ping", headers=bearer("alice"))
    assert resp.status == 429
    body = await resp.json()
    assert body["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert body["error"]["details"]["policy"] == "minute"
    assert body["error"]["details"]["scope"] == "user"
    assert body["error"]["trace_id"]
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    assert resp.headers["X-RateLimit-Remaining"] == "0"
    assert resp.headers["RateLimit"].startswith('"minute";r=0;')
    # another user has a budget of their own
    assert (await client.get("/v1/test/ping", headers=bearer("bob"))).status == 200


async def test_exactly_100_of_500_concurrent_requests_pass(
        limited_gateway: Callable[..., Any], backend: str) -> None:
    """500 concurrent requests from one principal against 100/min: exactly 100 get 200."""
    client = await limited_gateway(**limited(100, 1000))
    headers = bearer("alice")

    async def one() -> int:
        resp = await client.get("/v1/test/ping", headers=headers)
        await resp.read()
        return resp.status

    statuses = await asyncio.gather(*(one() for _ in range(500)))
    assert statuses.count(200) == 100
    assert statuses.count(429) == 400


@pytest.mark.parametrize("backend", ["redis"])
async def test_two_gateways_on_one_redis_share_the_limit(
        limited_gateway: Callable[..., Any], backend: str) -> None:
    """Two apps on two ports, one Redis: 300 concurrent requests split, exactly 100 pass."""
    first = await limited_gateway(**limited(100, 1000))
    second = await limited_gateway(**limited(100, 1000))
    assert first.port != second.port
    headers = bearer("alice")

    async def one(client: Client) -> int:
        resp = await client.get("/v1/test/ping", headers=headers)
        await resp.read()
        return resp.status

    statuses = await asyncio.gather(*(one(first if i % 2 else second) for i in range(300)))
    assert statuses.count(200) == 100


async def test_route_cost_is_charged(limited_gateway: Callable[..., Any], backend: str) -> None:
    """A cost-5 route against 12/min: two calls pass, the third is refused."""
    client = await limited_gateway(**limited(12, 100))
    statuses = [(await client.get("/v1/test/report", headers=bearer())).status
                for _ in range(3)]
    assert statuses == [200, 200, 429]
    resp = await client.get("/v1/test/ping", headers=bearer())
    assert resp.status == 200 and resp.headers["X-RateLimit-Remaining"] == "1"


async def test_unlimited_paths_are_untouched(limited_gateway: Callable[..., Any],
                                             backend: str) -> None:
    """Public routes, undeclared-limit routes and refused credentials consume nothing."""
    client = await limited_gateway(**limited(2, 100))
    for _ in range(5):
        health = await client.get("/healthz")
        assert health.status == 200 and "RateLimit" not in health.headers
        free = await client.get("/v1/test/free", headers=bearer())
        assert free.status == 200 and "X-RateLimit-Limit" not in free.headers
        assert (await client.get("/v1/test/ping")).status == 401
        bad = await client.get("/v1/test/ping", headers={"Authorization": "Bearer x.y.z"})
        assert bad.status == 401
    resp = await client.get("/v1/test/ping", headers=bearer())
    assert resp.status == 200 and resp.headers["X-RateLimit-Remaining"] == "1"


async def test_disabled_limits_send_no_headers(limited_gateway: Callable[..., Any],
                                               backend: str) -> None:
    """With [ratelimit] enabled = false nothing is limited and no header is added."""
    client = await limited_gateway()
    for _ in range(10):
        resp = await client.get("/v1/test/ping", headers=bearer())
        assert resp.status == 200 and "RateLimit-Policy" not in resp.headers


async def test_streamed_responses_get_headers_too(limited_gateway: Callable[..., Any],
                                                  backend: str) -> None:
    """A handler that prepares its own stream still sends the rate-limit headers."""
    client = await limited_gateway(**limited(5, 100))
    resp = await client.get("/v1/test/stream", headers=bearer())
    assert resp.status == 200
    assert resp.headers["X-RateLimit-Remaining"] == "4"
    assert await resp.text() == "data: hi\n\n"


async def test_global_and_per_ip_policies(limited_gateway: Callable[..., Any],
                                          backend: str) -> None:
    """The global window is shared by everyone; the IP window by one address."""
    client = await limited_gateway(**limited(100, 1000, global_per_min=4))
    statuses = [(await client.get("/v1/test/ping", headers=bearer(f"u{i}"))).status
                for i in range(5)]
    assert statuses == [200] * 4 + [429]
    resp = await client.get("/v1/test/ping", headers=bearer("u9"))
    assert (await resp.json())["error"]["details"]["policy"] == "global"
    assert resp.headers["RateLimit-Policy"].startswith('"global";q=4;w=60')

    per_ip = await limited_gateway(**limited(100, 1000, per_ip_per_min=2))
    statuses = [(await per_ip.get("/v1/test/ping", headers=bearer(f"u{i}"))).status
                for i in range(3)]
    assert statuses == [200, 200, 429]


async def test_forwarded_for_counts_only_behind_a_trusted_proxy(
        limited_gateway: Callable[..., Any], backend: str) -> None:
    """X-Forwarded-For picks the IP bucket only when the peer is a trusted proxy."""
    untrusted = await limited_gateway(**limited(100, 1000, per_ip_per_min=2))
    spoofed = [(await untrusted.get("/v1/test/ping", headers={
        **bearer(), "X-Forwarded-For": f"203.0.113.{i}"})).status for i in range(3)]
    assert spoofed == [200, 200, 429]  # spoofing the header does not buy a new budget

    trusted = await limited_gateway(trusted_proxies=["127.0.0.0/8"],
                                    **limited(100, 1000, per_ip_per_min=2))
    for client_ip in ("203.0.113.7", "203.0.113.8"):
        chain = f"{client_ip}, 127.0.0.1"  # client, then our own inner proxy
        statuses = [(await trusted.get("/v1/test/ping", headers={
            **bearer(), "X-Forwarded-For": chain})).status for _ in range(3)]
        assert statuses == [200, 200, 429]


async def test_anonymous_callers_are_limited_per_ip(limited_gateway: Callable[..., Any],
                                                    backend: str) -> None:
    """With auth disabled every caller is anonymous; the budget is per client address."""
    client = await limited_gateway(auth={"enabled": False}, **limited(3, 100))
    statuses = [(await client.get("/v1/test/ping")).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    body = await (await client.get("/v1/test/ping")).json()
    assert body["error"]["details"]["scope"] == "anon"


async def test_decisions_are_counted_in_metrics(limited_gateway: Callable[..., Any],
                                                backend: str) -> None:
    """luki_ratelimit_decisions_total counts allowed and rejected decisions per policy."""
    client = await limited_gateway(**limited(2, 100))
    for _ in range(3):
        await client.get("/v1/test/ping", headers=bearer())
    text = await (await client.get("/metrics")).text()
    assert 'luki_ratelimit_decisions_total{outcome="allowed",policy="minute"} 2.0' in text
    assert 'luki_ratelimit_decisions_total{outcome="allowed",policy="hour"} 2.0' in text
    assert 'luki_ratelimit_decisions_total{outcome="rejected",policy="minute"} 1.0' in text


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_down_fails_open_for_rest_and_closed_for_publish(
        limited_gateway: Callable[..., Any], redis_server: RedisServer, backend: str) -> None:
    """Redis killed: REST is served unlimited, publishing is refused; both recover by restart."""
    client = await limited_gateway(**limited(2, 100))
    publisher = bearer("svc", ("events:publish",))
    assert (await client.get("/v1/test/ping", headers=bearer())).status == 200
    redis_server.kill()
    try:
        for _ in range(5):
            resp = await client.get("/v1/test/ping", headers=bearer())
            assert resp.status == 200 and "RateLimit" not in resp.headers
        refused = await client.post("/v1/test/publish", headers=publisher)
        assert refused.status == 503 and refused.headers["Retry-After"] == "1"
        assert (await refused.json())["error"]["details"]["reason"] == (
            "rate_limiter_unavailable")
        metrics = await (await client.get("/metrics")).text()
        assert "luki_ratelimit_backend_errors_total" in metrics
        assert 'outcome="failed_open"' in metrics and 'outcome="failed_closed"' in metrics
    finally:
        redis_server.start()
    async with asyncio.timeout(5):
        while True:
            if (await client.post("/v1/test/publish", headers=publisher)).status == 200:
                break
            await asyncio.sleep(0.05)  # polling recovery: there is no event to wait on
    # limits are back: the empty restarted Redis counts from zero
    statuses = [(await client.get("/v1/test/ping", headers=bearer())).status
                for _ in range(3)]
    assert statuses == [200, 200, 429]


@pytest.mark.parametrize("backend", ["redis"])
async def test_frozen_redis_adds_bounded_latency(limited_gateway: Callable[..., Any],
                                                 redis_server: RedisServer,
                                                 backend: str) -> None:
    """Redis SIGSTOPped under load: requests still answer, p99 within timeout plus margin."""
    client = await limited_gateway(**limited(10_000, 100_000))
    loop = asyncio.get_running_loop()
    headers = bearer()

    async def timed() -> tuple[int, float]:
        start = loop.time()
        resp = await client.get("/v1/test/ping", headers=headers)
        await resp.read()
        return resp.status, loop.time() - start

    baseline = sorted(t for _, t in await asyncio.gather(*(timed() for _ in range(50))))
    redis_server.pause()
    try:
        results = []
        for _ in range(4):
            results += await asyncio.gather(*(timed() for _ in range(50)))
    finally:
        redis_server.resume()
    assert all(status == 200 for status, _ in results)
    latencies = sorted(t for _, t in results)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert p99 < 0.2 + 0.3 + baseline[-1]  # timeout + margin for a shared 2-core machine


@pytest.mark.parametrize("backend", ["redis"])
async def test_every_key_the_rate_limit_area_writes_has_a_ttl(
        limited_gateway: Callable[..., Any], backend: str, redis_url: str) -> None:
    """After a mixed workload (limits, 429s, leases, quotas), every lgw:rl/lease key expires."""
    client = await limited_gateway(**limited(3, 10, global_per_min=100, per_ip_per_min=50,
                                             max_streams=2, daily_output_tokens=100))
    app = client.server.app
    for user in ("a", "b"):
        for _ in range(4):
            await client.get("/v1/test/ping", headers=bearer(user))
        await client.get("/v1/test/report", headers=bearer(user))
        await client.get("/v1/usage", headers=bearer(user))
    principal = Principal(id="jwt:a", kind="jwt", subject="a", scopes=frozenset())
    lease = await app[LEASES].acquire(principal, "sse")
    await app[LEASES].refresh()
    await app[TOKEN_QUOTA].charge(principal, 42)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        keys = sorted([k async for k in raw.scan_iter(match="lgw:*")])
        mine = [k for k in keys if k.startswith((b"lgw:rl:", b"lgw:lease:"))]
        assert {k.split(b":")[1] for k in mine} == {b"rl", b"lease"}
        assert len(mine) >= 8
        for key in mine:
            assert await raw.pttl(key) > 0, key
    finally:
        await lease.release()
        await raw.aclose()


async def leased_stream(request: web.Request) -> web.StreamResponse:
    """A test SSE route holding a stream lease until the client goes away."""
    lease = await request.app[LEASES].acquire(principal_of(request), "sse")
    try:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        while True:
            await response.write(b": keep-alive\n\n")
            await asyncio.sleep(0.05)
    finally:
        await lease.release()


async def test_client_disconnect_releases_the_lease_within_a_second(
        aiohttp_client: ClientFactory, make_settings: Callable[..., Settings],
        backend: str) -> None:
    """Two streams fill a cap of 2; the third is 429; a client leaving frees its slot < 1 s."""
    app = create_app(make_settings(**limited(100, 1000, max_streams=2)))
    declare(app, app.router.add_get("/v1/test/sse", leased_stream), RouteAccess())
    client: Client = await aiohttp_client(app)
    headers = bearer("alice")
    first = await client.get("/v1/test/sse", headers=headers)
    second = await client.get("/v1/test/sse", headers=headers)
    assert (first.status, second.status) == (200, 200)
    await first.content.readline()
    refused = await client.get("/v1/test/sse", headers=headers)
    assert refused.status == 429
    assert (await refused.json())["error"]["details"]["kind"] == "concurrency"
    loop = asyncio.get_running_loop()
    first.close()  # the client goes away mid-stream
    left_at = loop.time()
    principal = Principal(id="jwt:alice", kind="jwt", subject="alice", scopes=frozenset())
    async with asyncio.timeout(1.0):
        while True:
            if await app[LEASES].open_count(principal, "streams") == 1:
                break
            await asyncio.sleep(0.02)  # the release happens in another task; poll for it
    assert loop.time() - left_at < 1.0
    third = await client.get("/v1/test/sse", headers=headers)
    assert third.status == 200
    second.close()
    third.close()


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_killed_then_frozen_during_load(limited_gateway: Callable[..., Any],
                                                    redis_server: RedisServer,
                                                    backend: str) -> None:
    """Under steady load Redis dies, returns, freezes, thaws: every request is answered
    (fail open), none waits much past the timeout, and limiting resumes on its own."""
    client = await limited_gateway(**limited(1_000_000, 10_000_000))
    loop = asyncio.get_running_loop()
    headers = bearer()
    samples: list[tuple[float, int, float, bool]] = []  # (start, status, latency, limited)
    stop = asyncio.Event()

    async def worker() -> None:
        while not stop.is_set():
            start = loop.time()
            resp = await client.get("/v1/test/ping", headers=headers)
            await resp.read()
            samples.append((start, resp.status, loop.time() - start,
                            "X-RateLimit-Limit" in resp.headers))

    workers = [asyncio.create_task(worker()) for _ in range(16)]
    phases = [(redis_server.kill, 0.4), (redis_server.start, 0.6), (redis_server.pause, 0.6),
              (redis_server.resume, 0.6)]
    try:
        await asyncio.sleep(0.3)
        for action, hold in phases:
            action()
            await asyncio.sleep(hold)
        recovered_at = loop.time() - 0.6
    finally:
        stop.set()
        await asyncio.gather(*workers)
        if redis_server.paused:
            redis_server.resume()
    assert len(samples) > 100
    assert {status for _, status, _, _ in samples} == {200}
    latencies = sorted(latency for _, _, latency, _ in samples)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert p99 < 0.2 + 0.3, p99
    assert not all(lim for _, _, _, lim in samples)  # some were served unlimited (failed open)
    assert any(lim for start, _, _, lim in samples if start > recovered_at)
