"""One suite for both limiter backends: exactness, stacked windows, cost, retry, reset."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from luki_gateway.ratelimit.decision import Limiter, Window
from luki_gateway.ratelimit.memory import MemoryLimiter

from .conftest import FakeClock, assert_all_keys_have_ttl


def window(limit: int, window_s: float = 60, policy: str = "minute",
           key: str = "rl:user:alice:60") -> Window:
    """A window for tests."""
    return Window(policy, "user", key, limit, window_s)


async def test_exactly_limit_allowed_under_500_concurrent(
        make_limiter: Callable[[], Limiter]) -> None:
    """500 concurrent decisions against 100/min admit exactly 100."""
    limiter = make_limiter()
    windows = (window(100),)
    decisions = await asyncio.gather(*(limiter.decide(windows, 1) for _ in range(500)))
    assert sum(d.allowed for d in decisions) == 100
    assert all(d.rejected_by == windows[0] for d in decisions if not d.allowed)


async def test_two_limiters_share_one_budget(make_limiter: Callable[[], Limiter],
                                             backend: str) -> None:
    """Two limiters (two apps' clients on one Redis) split 300 requests: exactly 100 pass."""
    if backend == "memory":
        first = second = make_limiter()  # the memory twin is one process by definition
    else:
        first, second = make_limiter(), make_limiter()
    windows = (window(100),)
    calls = [(first if i % 2 else second).decide(windows, 1) for i in range(300)]
    decisions = await asyncio.gather(*calls)
    assert sum(d.allowed for d in decisions) == 100


async def test_rejection_by_hour_does_not_consume_minute(
        make_limiter: Callable[[], Limiter]) -> None:
    """Stacked windows are atomic: a request the hour refuses is not counted by the minute."""
    limiter = make_limiter()
    for user, hour_first in (("alice", False), ("bob", True)):
        minute = window(10, key=f"rl:user:{user}:60")
        hour = window(5, 3600, "hour", f"rl:user:{user}:3600")
        windows = (hour, minute) if hour_first else (minute, hour)
        results = [await limiter.decide(windows, 1) for _ in range(8)]
        assert [d.allowed for d in results] == [True] * 5 + [False] * 3
        assert results[-1].rejected_by == hour
        state = await limiter.peek(windows)
        by_policy = {s.window.policy: s.remaining for s in state.states}
        assert by_policy == {"minute": 5, "hour": 0}


async def test_cost_counts_units_and_oversized_cost_never_passes(
        make_limiter: Callable[[], Limiter]) -> None:
    """Cost 5 against 12: two pass, the third is refused; cost over the limit waits a window."""
    limiter = make_limiter()
    windows = (window(12),)
    results = [await limiter.decide(windows, 5) for _ in range(3)]
    assert [d.allowed for d in results] == [True, True, False]
    assert results[1].states[0].remaining == 2
    assert results[2].states[0].remaining == 2
    huge = await limiter.decide((window(3, key="rl:user:carol:60"),), 4)
    assert not huge.allowed
    assert huge.retry_after_s == 60


async def test_retry_after_and_reset_are_within_the_window(
        make_limiter: Callable[[], Limiter]) -> None:
    """A refused decision says when to retry (0 < wait <= window); reset counts down."""
    limiter = make_limiter()
    windows = (window(3, 10),)
    for _ in range(3):
        ok = await limiter.decide(windows, 1)
        assert ok.allowed
        assert 0 < ok.states[0].reset_s <= 10
    refused = await limiter.decide(windows, 1)
    assert not refused.allowed
    assert 0 < refused.retry_after_s <= 10
    assert refused.states[0].remaining == 0


async def test_peek_charges_nothing(make_limiter: Callable[[], Limiter]) -> None:
    """peek() reports the state without consuming a unit."""
    limiter = make_limiter()
    windows = (window(2),)
    for _ in range(5):
        state = await limiter.peek(windows)
        assert state.allowed and state.states[0].remaining == 2
    assert (await limiter.decide(windows, 1)).states[0].remaining == 1


async def test_no_windows_is_allowed(make_limiter: Callable[[], Limiter]) -> None:
    """A request with no applicable window passes with no state."""
    decision = await make_limiter().decide((), 1)
    assert decision.allowed and decision.states == () and decision.tightest is None


async def test_sliding_log_bound_holds_across_boundaries_with_injected_clock() -> None:
    """Random arrivals over many windows: no interval of window length admits over the limit."""
    clock = FakeClock()
    limiter = MemoryLimiter(clock)
    limit, width = 10, 10.0
    windows = (window(limit, width),)
    rng = random.Random(6)
    admitted: list[float] = []
    for _ in range(3000):
        clock.now += rng.choice((0.0, 0.001, 0.05, 0.5, 2.0))
        if (await limiter.decide(windows, 1)).allowed:
            admitted.append(clock.now)
    assert len(admitted) > 10 * limit  # the test spans many windows
    for i, start in enumerate(admitted):
        inside = [t for t in admitted[i:i + limit + 1] if t < start + width]
        assert len(inside) <= limit
    # And the classic double burst: a full burst just before a boundary, another just after.
    clock.now = 10_000 * width - 0.01
    burst_key = (window(limit, width, key="rl:user:burst:10"),)
    assert all([(await limiter.decide(burst_key, 1)).allowed for _ in range(limit)])
    clock.now += 0.02
    assert not any([(await limiter.decide(burst_key, 1)).allowed for _ in range(limit)])
    clock.now += width  # the first burst has aged out
    assert (await limiter.decide(burst_key, 1)).allowed


async def test_memory_twin_drops_idle_keys() -> None:
    """Keys of callers that went quiet are swept, so distinct IPs do not pile up."""
    clock = FakeClock()
    limiter = MemoryLimiter(clock)
    for i in range(12000):
        await limiter.decide((window(5, 1, key=f"rl:ip:10.{i // 65536}.{i // 256 % 256}"
                                                f".{i % 256}:1"),), 1)
        clock.now += 0.01
    # at most one sweep interval of keys plus those still inside their 1 s window
    assert limiter.key_count <= 4096 + 100


async def test_short_real_window_has_no_double_burst(
        make_limiter: Callable[[], Limiter], backend: str) -> None:
    """A real 2 s window (both backends): after a full burst, capacity returns only as it ages."""
    limiter = make_limiter()
    windows = (window(5, 2, key=f"rl:user:{backend}-short:2"),)
    loop = asyncio.get_running_loop()
    first = [await limiter.decide(windows, 1) for _ in range(5)]
    start = loop.time()
    assert all(d.allowed for d in first)
    refused = await limiter.decide(windows, 1)
    assert not refused.allowed and 1.5 < refused.retry_after_s <= 2.0
    admitted_at: list[float] = []
    deadline = start + 3.0
    while loop.time() < deadline:
        if (await limiter.decide(windows, 1)).allowed:
            admitted_at.append(loop.time())
        await asyncio.sleep(0.02)
    # Nothing more until the first burst aged out (2 s, minus the burst's own duration).
    assert admitted_at, "capacity never came back"
    assert admitted_at[0] - start >= 1.8
    assert len(admitted_at) <= 5


@pytest.mark.parametrize("backend", ["redis"])
async def test_every_limiter_key_has_a_ttl(make_limiter: Callable[[], Limiter],
                                           raw_redis: aioredis.Redis) -> None:
    """All lgw:rl:* keys the Redis limiter writes expire."""
    limiter = make_limiter()
    for user in ("a", "b", "c"):
        await limiter.decide((window(5, key=f"rl:user:{user}:60"),
                              window(50, 3600, "hour", f"rl:user:{user}:3600")), 2)
    keys = [k async for k in raw_redis.scan_iter(match="lgw:rl:*")]
    assert len(keys) == 6
    assert await assert_all_keys_have_ttl(raw_redis) >= 6
