"""The Redis copy of resumable turns under faults: stalls, restarts, long turns."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from luki_gateway.hub import turns as turns_module
from luki_gateway.hub.turns import TurnRegistry
from luki_gateway.redis_client import make_redis
from luki_gateway.settings import ChatSettings, Settings
from tests.redis_server import RedisServer


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[tuple[TurnRegistry, aioredis.Redis]]:
    """A turn registry on the private Redis, through the app's own client settings."""
    redis = make_redis(Settings(redis_url=redis_url))
    registry = TurnRegistry(ChatSettings(resume_ttl_s=60), redis, "lgw:")
    yield registry, redis
    await registry.close()
    await redis.aclose()


async def _seqs(registry: TurnRegistry, turn_id: str, after: int = 0) -> list[int]:
    async with asyncio.timeout(5):
        return [e.seq async for e in registry.remote_events(turn_id, "alice", after)]


async def test_a_write_that_fails_is_sent_again(
        redis_server: RedisServer, store: tuple[TurnRegistry, aioredis.Redis]) -> None:
    """Events queued while Redis is frozen are not lost: the failed batch is kept and
    written once Redis answers again, in order, each seq once for a follower."""
    registry, _ = store
    turn = registry.create("t_stall", "alice")
    turn.publish("token", b'{"text": "a"}', "a")
    assert await registry.flush()
    redis_server.pause()
    try:
        for text in "bcd":
            turn.publish("token", b'{"text": "%s"}' % text.encode(), text)
        registry.create("t_started_meanwhile", "alice")
        assert not await registry.flush()  # timed out: kept
    finally:
        redis_server.resume()
    turn.publish("done", b'{"finish_reason": "stop"}', {"finish_reason": "stop"})
    assert await registry.flush()
    assert await _seqs(registry, "t_stall") == [1, 2, 3, 4, 5]
    await registry.check_remote("t_started_meanwhile", "alice")  # its owner was kept


async def test_followers_skip_an_event_stored_twice(
        store: tuple[TurnRegistry, aioredis.Redis]) -> None:
    """A batch resent after a broken connection may be stored twice: followers get each
    seq once."""
    registry, redis = store
    turn = registry.create("t_twice", "alice")
    turn.publish("token", b'{"text": "a"}', "a")
    turn.publish("token", b'{"text": "b"}', "b")
    assert await registry.flush()
    await redis.xadd("lgw:turn:t_twice", {"s": 2, "e": "token", "d": b'{"text": "b"}'})
    turn.publish("done", b'{"finish_reason": "stop"}', {"finish_reason": "stop"})
    assert await registry.flush()
    assert await _seqs(registry, "t_twice") == [1, 2, 3]
    assert await _seqs(registry, "t_twice", after=1) == [2, 3]


async def test_a_long_turn_stays_resumable_after_its_end(
        store: tuple[TurnRegistry, aioredis.Redis]) -> None:
    """The owner record lives as long as the events: each write renews both TTLs, so a
    turn that ran longer than the TTL is still resumable from another process."""
    registry, redis = store
    turn = registry.create("t_long", "alice")
    turn.publish("token", b'{"text": "a"}', "a")
    assert await registry.flush()
    await redis.pexpire("lgw:turn:t_long:meta", 300)  # as if the turn ran for a while
    turn.publish("done", b'{"finish_reason": "stop"}', {"finish_reason": "stop"})
    assert await registry.flush()
    assert await redis.pttl("lgw:turn:t_long:meta") > 50_000
    await asyncio.sleep(0.4)
    assert await _seqs(registry, "t_long") == [1, 2]


async def test_a_redis_restart_costs_no_call_an_error(redis_server: RedisServer,
                                                      redis_url: str,
                                                      gateway: Callable[..., Any]) -> None:
    """Pooled connections broken by a restart are replaced on their next use: the call
    is sent again on a fresh one instead of failing (and /ready stays ready)."""
    redis = make_redis(Settings(redis_url=redis_url))
    client = await gateway(redis_url=redis_url)
    try:
        await asyncio.gather(*(redis.ping() for _ in range(5)))  # several pooled connections
        assert (await client.get("/ready")).status == 200
        redis_server.restart()
        assert all(await asyncio.gather(*(redis.ping() for _ in range(5))))
        for _ in range(3):
            resp = await client.get("/ready")
            assert resp.status == 200, await resp.text()
    finally:
        await redis.aclose()


async def test_an_owner_record_lost_by_redis_is_written_again(
        store: tuple[TurnRegistry, aioredis.Redis]) -> None:
    """Redis lost a running turn's owner record (restarted without persistence): the
    turn's next write stores it again, so the turn is resumable elsewhere again."""
    registry, redis = store
    turn = registry.create("t_lost", "alice")
    turn.publish("token", b'{"text": "a"}', "a")
    assert await registry.flush()
    await redis.delete("lgw:turn:t_lost:meta")
    turn.publish("done", b'{"finish_reason": "stop"}', {"finish_reason": "stop"})
    assert await registry.flush()
    await registry.check_remote("t_lost", "alice")
    assert await _seqs(registry, "t_lost") == [1, 2]


async def test_a_follower_learns_at_once_that_the_owner_process_died(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A quiet turn whose process still says it is alive is followed on; once that process
    stops saying so (killed), the follower ends the turn within seconds, not after the
    idle timeout plus the grace period (75 s by default)."""
    monkeypatch.setattr(turns_module, "WATCH_REFRESH_S", 0.2)
    monkeypatch.setattr(turns_module, "ALIVE_TTL_MS", 600)
    monkeypatch.setattr(turns_module, "LIVENESS_QUIET_S", 1.0)
    redis = make_redis(Settings(redis_url=redis_url))
    owner = TurnRegistry(ChatSettings(), redis, "lgw:")
    follower = TurnRegistry(ChatSettings(), redis, "lgw:")
    owner.start()
    try:
        quiet = owner.create("t_quiet", "alice")
        quiet.publish("token", b'{"text": "a"}', "a")
        dying = owner.create("t_dying", "alice")
        dying.publish("token", b'{"text": "a"}', "a")
        await owner.flush()
        got: dict[str, list[Any]] = {"t_quiet": [], "t_dying": []}
        tasks = [asyncio.create_task(follower.follow(t, "alice", 1, got[t].append, "trace"))
                 for t in got]
        await asyncio.sleep(2.0)  # quiet for twice LIVENESS_QUIET_S: the owner is alive
        assert got == {"t_quiet": [], "t_dying": []}
        quiet.publish("done", b'{"finish_reason": "stop"}', {"finish_reason": "stop"})
        await owner.flush()
        async with asyncio.timeout(3):
            await tasks[0]
        assert [(e.seq, e.event) for e in got["t_quiet"]] == [(2, "done")]
        watch = owner._cancel_watch
        assert watch is not None
        watch.cancel()  # the owner stops saying it is alive, as a killed process would
        died_at = time.monotonic()
        async with asyncio.timeout(5):
            await tasks[1]
        assert time.monotonic() - died_at < 4.0
        assert [(e.seq, e.event) for e in got["t_dying"]] == [(turns_module.LOST_SEQ, "error")]
        assert got["t_dying"][0].value["error"]["code"] == "DOWNSTREAM_TIMEOUT"
    finally:
        await owner.close()
        await follower.close()
        await redis.aclose()


async def test_close_does_not_hang_on_a_redis_call_that_eats_the_cancel(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-py can swallow a cancel (a read timing out as it lands, then its retry
    returns normally): the registry's watch still stops, and close() returns."""
    redis = make_redis(Settings(redis_url=redis_url))
    registry = TurnRegistry(ChatSettings(), redis, "lgw:")
    entered = asyncio.Event()

    async def eats_the_cancel(*_: Any, **__: Any) -> bool:
        entered.set()
        with contextlib.suppress(asyncio.CancelledError):  # as redis-py's retry can
            await asyncio.sleep(0.5)
        return True

    monkeypatch.setattr(redis, "set", eats_the_cancel)
    registry.start()
    try:
        await entered.wait()
        async with asyncio.timeout(3):
            await registry.close()
        watch = registry._cancel_watch
        assert watch is None
    finally:
        await redis.aclose()
