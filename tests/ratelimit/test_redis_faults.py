"""The Redis limiter under faults: NOSCRIPT, a killed server, a frozen server, recovery."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from luki_gateway.ratelimit.batch import BackendUnavailable, ErrorLog, ScriptBatch
from luki_gateway.ratelimit.decision import Window
from luki_gateway.ratelimit.redis_backend import SLIDING_LOG, RedisLimiter

from ..redis_server import RedisServer, free_port
from .conftest import PREFIX, TIMEOUT_S, FakeClock, redis_client

WINDOWS = (Window("minute", "user", "rl:user:alice:60", 1000, 60),)
MARGIN_S = 0.3  # 2 shared cores: scheduling noise on top of the timeout


@pytest.fixture
def errors() -> list[int]:
    """Backend-error counts reported by the limiter's ScriptBatch."""
    return []


@pytest.fixture
async def limiter(redis_url: str, errors: list[int]) -> AsyncIterator[RedisLimiter]:
    """A Redis limiter with a 200 ms timeout and a 100 ms down back-off, counting errors."""
    client = redis_client(redis_url, TIMEOUT_S)
    batch = ScriptBatch(client, timeout_s=TIMEOUT_S, what="test", on_error=errors.append,
                        down_backoff_s=0.1)
    limiter = RedisLimiter(client, batch, PREFIX)
    yield limiter
    await limiter.close()
    await client.aclose()


async def wait_until_allowed(limiter: RedisLimiter, timeout_s: float = 5.0) -> float:
    """Retry decisions until the backend answers again; returns the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                await limiter.decide(WINDOWS, 1)
                return loop.time() - start
            except BackendUnavailable:
                await asyncio.sleep(0.05)


async def timed_failures(limiter: RedisLimiter, count: int) -> list[float]:
    """Run ``count`` concurrent decisions that must fail; return each one's latency."""
    loop = asyncio.get_running_loop()

    async def one() -> float:
        start = loop.time()
        with pytest.raises(BackendUnavailable):
            await limiter.decide(WINDOWS, 1)
        return loop.time() - start

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def test_decisions_in_one_tick_share_one_round_trip(limiter: RedisLimiter) -> None:
    """64 concurrent decisions cost one pipelined round trip, not 64."""
    await limiter.decide(WINDOWS, 1)  # warm the connection and the script
    before = limiter.batch.round_trips
    decisions = await asyncio.gather(*(limiter.decide(WINDOWS, 1) for _ in range(64)))
    assert all(d.allowed for d in decisions)
    assert limiter.batch.round_trips - before == 1


async def test_script_flush_is_survived(limiter: RedisLimiter, raw_redis: aioredis.Redis
                                        ) -> None:
    """After SCRIPT FLUSH the script is reloaded and the decision still counts once."""
    await limiter.decide(WINDOWS, 1)
    await raw_redis.script_flush()
    decisions = await asyncio.gather(*(limiter.decide(WINDOWS, 1) for _ in range(10)))
    assert all(d.allowed for d in decisions)
    assert (await limiter.peek(WINDOWS)).states[0].remaining == 1000 - 11


async def test_killed_redis_fails_fast_then_recovers(
        limiter: RedisLimiter, redis_server: RedisServer, errors: list[int]) -> None:
    """Redis killed: every decision fails within the timeout; restarted, decisions resume."""
    await limiter.decide(WINDOWS, 1)
    redis_server.kill()
    latencies = await timed_failures(limiter, 50)
    latencies += await timed_failures(limiter, 50)
    assert max(latencies) < TIMEOUT_S + MARGIN_S, latencies
    assert sum(errors) >= 100
    redis_server.start()
    assert await wait_until_allowed(limiter) < 2.0


async def test_a_restart_costs_no_decision_an_error(
        limiter: RedisLimiter, redis_server: RedisServer, errors: list[int]) -> None:
    """Redis restarted between two decisions: the pooled connection is broken, the next
    decision goes out again on a fresh one (and reloads the script) instead of failing."""
    await limiter.decide(WINDOWS, 1)
    redis_server.restart()
    for _ in range(3):
        assert (await limiter.decide(WINDOWS, 1)).allowed
    assert errors == []


async def test_frozen_redis_times_out_within_bound_then_recovers(
        limiter: RedisLimiter, redis_server: RedisServer) -> None:
    """Redis SIGSTOPped: decisions fail after the timeout, not 5 s; SIGCONT: they pass again."""
    await limiter.decide(WINDOWS, 1)
    redis_server.pause()
    try:
        latencies = []
        for _ in range(5):
            latencies += await timed_failures(limiter, 20)
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        assert p99 < TIMEOUT_S + MARGIN_S, latencies
    finally:
        redis_server.resume()
    assert await wait_until_allowed(limiter) < 2.0
    assert (await limiter.decide(WINDOWS, 1)).allowed


async def test_outage_is_logged_once_per_interval(
        limiter: RedisLimiter, redis_server: RedisServer) -> None:
    """Hundreds of failed decisions during one outage write one warning, not hundreds."""
    await limiter.decide(WINDOWS, 1)
    redis_server.kill()
    with capture_logs() as logs:
        for _ in range(4):
            await timed_failures(limiter, 50)
            await asyncio.sleep(0.12)  # past the down back-off: each round probes Redis again
    warnings = [e for e in logs if e["event"] == "redis backend unavailable"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"


async def test_redis_refusing_writes_counts_as_unavailable(
        limiter: RedisLimiter, raw_redis: aioredis.Redis, errors: list[int]) -> None:
    """A READONLY answer (a replica after failover) fails the decision like an outage."""
    await limiter.decide(WINDOWS, 1)
    await raw_redis.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    try:
        with pytest.raises(BackendUnavailable, match="read only"):
            await limiter.decide(WINDOWS, 1)
        assert sum(errors) == 1
    finally:
        await raw_redis.execute_command("REPLICAOF", "NO", "ONE")
    assert (await limiter.decide(WINDOWS, 1)).allowed


def test_error_log_speaks_again_after_its_interval() -> None:
    """One line per interval; the next line reports how many failures it swallowed."""
    clock = FakeClock(0.0)
    errors = ErrorLog("test", interval_s=10.0, clock=clock)
    with capture_logs() as logs:
        for second in range(25):
            clock.now = float(second)
            for _ in range(3):
                errors.failure(TimeoutError())
    assert [e["suppressed"] for e in logs] == [0, 29, 29]
    assert {e["error"] for e in logs} == {"TimeoutError"}


async def test_noscript_costs_one_extra_round_trip(limiter: RedisLimiter,
                                                   raw_redis: aioredis.Redis) -> None:
    """After SCRIPT FLUSH the affected calls rerun with EVAL in one more round trip."""
    await limiter.decide(WINDOWS, 1)
    await raw_redis.script_flush()
    before = limiter.batch.round_trips
    await asyncio.gather(*(limiter.decide(WINDOWS, 1) for _ in range(20)))
    assert limiter.batch.round_trips - before == 2
    assert (await raw_redis.script_exists(SLIDING_LOG.sha)) == [True]
    await limiter.decide(WINDOWS, 1)
    assert limiter.batch.round_trips - before == 3


async def test_preload_caches_the_script_and_survives_a_dead_redis(
        limiter: RedisLimiter, raw_redis: aioredis.Redis, redis_server: RedisServer) -> None:
    """Start-up preloading puts the script in Redis; with Redis down it only logs."""
    await raw_redis.script_flush()
    await limiter.batch.preload(SLIDING_LOG)
    assert (await raw_redis.script_exists(SLIDING_LOG.sha)) == [True]
    redis_server.kill()
    try:
        await limiter.batch.preload(SLIDING_LOG)
    finally:
        redis_server.start()
