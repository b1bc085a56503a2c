"""Fixtures for the rate-limit tests: limiters on both backends, a raw Redis client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from luki_gateway.ratelimit.batch import ScriptBatch
from luki_gateway.ratelimit.decision import Limiter
from luki_gateway.ratelimit.memory import MemoryLimiter
from luki_gateway.ratelimit.redis_backend import RedisLimiter

PREFIX = "lgw:"
# The gateway's default Redis timeout, for the fault tests that measure added latency.
TIMEOUT_S = 0.2
# Correctness tests (exact counts) on a loaded CI machine: a slow round trip must not
# turn into a spurious "backend down" — faults are tested separately with TIMEOUT_S.
SLACK_TIMEOUT_S = 3.0


class FakeClock:
    """A hand-moved monotonic clock for window-boundary tests (memory backend)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def redis_client(url: str, timeout_s: float = SLACK_TIMEOUT_S) -> aioredis.Redis:
    """A client configured as the gateway's (timeouts bounded)."""
    return aioredis.Redis.from_url(url, socket_timeout=timeout_s,
                                   socket_connect_timeout=timeout_s, max_connections=512)


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the private Redis for inspecting keys and TTLs."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    await client.aclose()


@pytest.fixture
async def make_limiter(backend: str, request: pytest.FixtureRequest
                       ) -> AsyncIterator[Callable[[], Limiter]]:
    """Factory of limiters on this test's backend; Redis ones share the private server."""
    clients: list[aioredis.Redis] = []
    limiters: list[Limiter] = []
    url = request.getfixturevalue("redis_url") if backend == "redis" else ""

    def build() -> Limiter:
        limiter: Limiter
        if backend == "memory":
            limiter = MemoryLimiter()
        else:
            client = redis_client(url)
            clients.append(client)
            limiter = RedisLimiter(client, ScriptBatch(client, timeout_s=SLACK_TIMEOUT_S,
                                                       what="test"), PREFIX)
        limiters.append(limiter)
        return limiter

    yield build
    for limiter in limiters:
        await limiter.close()
    for client in clients:
        await client.aclose()


async def assert_all_keys_have_ttl(client: aioredis.Redis) -> int:
    """Every key in the private Redis expires; returns how many were checked."""
    seen = 0
    async for key in client.scan_iter(match="*", count=1000):
        ttl = await client.pttl(key)
        assert ttl > 0, f"{key!r} has no TTL ({ttl})"
        seen += 1
    return seen
