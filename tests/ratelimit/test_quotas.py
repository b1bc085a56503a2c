"""Daily output-token quota on both stores: check, charge, UTC day roll-over, outages."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from luki_gateway.auth.principal import Principal
from luki_gateway.errors import DownstreamUnavailable, RateLimitExceeded
from luki_gateway.ratelimit.batch import ScriptBatch
from luki_gateway.ratelimit.quotas import MemoryQuotaStore, RedisQuotaStore, TokenQuota

from ..redis_server import RedisServer
from .conftest import PREFIX, SLACK_TIMEOUT_S, FakeClock, assert_all_keys_have_ttl, redis_client

ALICE = Principal(id="jwt:alice", kind="jwt", subject="alice", scopes=frozenset())
BOB = Principal(id="jwt:bob", kind="jwt", subject="bob", scopes=frozenset())
# 2026-11-23 23:59:00 UTC
LATE = dt.datetime(2026, 11, 23, 23, 59, tzinfo=dt.UTC).timestamp()

QuotaFactory = Callable[..., TokenQuota]


@pytest.fixture
async def make_quota(backend: str, request: pytest.FixtureRequest
                     ) -> AsyncIterator[QuotaFactory]:
    """Factory of TokenQuota objects on this test's backend."""
    clients: list[aioredis.Redis] = []
    url = request.getfixturevalue("redis_url") if backend == "redis" else ""

    def build(budget: int, clock: Callable[[], float], failure_mode: str = "open"
              ) -> TokenQuota:
        if backend == "memory":
            return TokenQuota(MemoryQuotaStore(), budget, prefix=PREFIX, clock=clock,
                              failure_mode=failure_mode)
        client = redis_client(url)
        clients.append(client)
        store = RedisQuotaStore(ScriptBatch(client, timeout_s=SLACK_TIMEOUT_S, what="t"))
        return TokenQuota(store, budget, prefix=PREFIX, clock=clock,
                          failure_mode=failure_mode)

    yield build
    for client in clients:
        await client.aclose()


async def test_budget_spent_refuses_until_utc_midnight(make_quota: QuotaFactory) -> None:
    """Charges add up; at the budget the check is 429 kind=tokens; a new day starts at 0."""
    clock = FakeClock(LATE)
    quota = make_quota(100, clock)
    await quota.check(ALICE)
    await quota.charge(ALICE, 60)
    await quota.check(ALICE)
    await quota.charge(ALICE, 70)  # a running turn may overshoot; the next one is refused
    with pytest.raises(RateLimitExceeded) as refused:
        await quota.check(ALICE)
    assert refused.value.details == {"kind": "tokens", "policy": "daily_output_tokens",
                                     "limit": 100, "used": 130, "retry_after_s": 60}
    assert refused.value.headers["Retry-After"] == "60"
    await quota.check(BOB)  # budgets are per principal
    usage = await quota.usage(ALICE)
    assert usage is not None and usage.remaining == 0 and usage.reset_s == 60
    clock.now += 61
    await quota.check(ALICE)
    usage = await quota.usage(ALICE)
    assert usage is not None and (usage.used, usage.remaining) == (0, 100)


async def test_off_by_default_does_nothing(make_quota: QuotaFactory) -> None:
    """Budget 0: check never refuses, charge records nothing, usage is None."""
    quota = make_quota(0, FakeClock(LATE))
    for _ in range(3):
        await quota.charge(ALICE, 10**6)
        await quota.check(ALICE)
    assert await quota.usage(ALICE) is None
    assert not quota.enabled


async def test_zero_and_negative_charges_are_ignored(make_quota: QuotaFactory) -> None:
    """A turn that streamed nothing (or a bogus negative count) changes nothing."""
    quota = make_quota(10, FakeClock(LATE))
    await quota.charge(ALICE, 0)
    await quota.charge(ALICE, -50)
    usage = await quota.usage(ALICE)
    assert usage is not None and usage.used == 0


@pytest.mark.parametrize("backend", ["redis"])
async def test_counters_expire_and_outage_fails_as_configured(
        make_quota: QuotaFactory, raw_redis: aioredis.Redis,
        redis_server: RedisServer) -> None:
    """Keys carry a TTL; with Redis down, open lets turns start, closed answers 503."""
    clock = FakeClock(LATE)
    opened = make_quota(10, clock)
    closed = make_quota(10, clock, failure_mode="closed")
    await opened.charge(ALICE, 3)
    assert await raw_redis.get("lgw:rl:tokens:jwt:alice:20261123") == b"3"
    assert await assert_all_keys_have_ttl(raw_redis) == 1
    redis_server.kill()
    await opened.check(ALICE)
    await opened.charge(ALICE, 3)  # lost, but never raises into the chat relay
    with pytest.raises(DownstreamUnavailable):
        await closed.check(ALICE)
    redis_server.start()
