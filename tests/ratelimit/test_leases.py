"""Concurrent-stream leases on both stores: caps, release, expiry, reclaim after a crash."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from luki_gateway.auth.principal import ANONYMOUS, Principal
from luki_gateway.errors import DownstreamUnavailable, RateLimitExceeded
from luki_gateway.ratelimit.batch import ScriptBatch
from luki_gateway.ratelimit.lease_store import LeaseStore, MemoryLeaseStore, RedisLeaseStore
from luki_gateway.ratelimit.leases import StreamLeases
from luki_gateway.ratelimit.metrics import RateLimitMetrics
from luki_gateway.settings import RateLimitSettings

from ..redis_server import RedisServer
from .conftest import PREFIX, SLACK_TIMEOUT_S, FakeClock, assert_all_keys_have_ttl, redis_client

ALICE = Principal(id="jwt:alice", kind="jwt", subject="alice", scopes=frozenset())
BOB = Principal(id="jwt:bob", kind="jwt", subject="bob", scopes=frozenset())

LeasesFactory = Callable[..., StreamLeases]


@pytest.fixture
async def make_leases(backend: str, request: pytest.FixtureRequest
                      ) -> AsyncIterator[LeasesFactory]:
    """Factory of StreamLeases on this test's backend, with their own metrics."""
    clients: list[aioredis.Redis] = []
    url = request.getfixturevalue("redis_url") if backend == "redis" else ""

    def build(store: LeaseStore | None = None, **settings: object) -> StreamLeases:
        if store is None:
            if backend == "memory":
                store = MemoryLeaseStore()
            else:
                client = redis_client(url)
                clients.append(client)
                store = RedisLeaseStore(ScriptBatch(client, timeout_s=SLACK_TIMEOUT_S, what="t",
                                                    down_backoff_s=0.05))
        config = RateLimitSettings(**{"max_streams": 3, "max_ws_per_user": 2, **settings})
        return StreamLeases(store, config, prefix=PREFIX,
                            metrics=RateLimitMetrics.create(CollectorRegistry()))

    yield build
    for client in clients:
        await client.aclose()


async def test_cap_refuses_with_concurrency_details_and_release_frees(
        make_leases: LeasesFactory) -> None:
    """Three SSE leases pass, the fourth is 429 kind=concurrency; a release makes room."""
    leases = make_leases()
    held = [await leases.acquire(ALICE, "sse") for _ in range(2)]
    held.append(await leases.acquire(ALICE, "chat"))  # chat turns share the stream cap
    with pytest.raises(RateLimitExceeded) as refused:
        await leases.acquire(ALICE, "sse")
    assert refused.value.details is not None
    assert refused.value.details["kind"] == "concurrency"
    assert refused.value.details["limit"] == 3
    assert refused.value.headers["Retry-After"] == "1"
    assert await leases.open_count(ALICE, "streams") == 3
    other = await leases.acquire(BOB, "sse")  # caps are per principal
    await held[0].release()
    await held[0].release()  # idempotent: frees one slot, not two
    again = await leases.acquire(ALICE, "sse")
    with pytest.raises(RateLimitExceeded):
        await leases.acquire(ALICE, "sse")
    for lease in [*held[1:], again, other]:
        await lease.release()
    assert leases.held == 0
    assert await leases.open_count(ALICE, "streams") == 0


async def test_websockets_have_their_own_cap(make_leases: LeasesFactory) -> None:
    """WS connections count against max_ws_per_user, not the stream cap."""
    leases = make_leases()
    streams = [await leases.acquire(ALICE, "sse") for _ in range(3)]
    sockets = [await leases.acquire(ALICE, "ws") for _ in range(2)]
    with pytest.raises(RateLimitExceeded) as refused:
        await leases.acquire(ALICE, "ws")
    assert refused.value.details is not None and refused.value.details["stream_kind"] == "ws"
    for lease in streams + sockets:
        await lease.release()


async def test_exactly_cap_granted_under_concurrency(make_leases: LeasesFactory,
                                                    backend: str) -> None:
    """50 simultaneous acquisitions (two gateways on one store for Redis) grant exactly 5."""
    first = make_leases(max_streams=5)
    second = make_leases(max_streams=5) if backend == "redis" else first

    async def attempt(i: int) -> bool:
        try:
            await (first if i % 2 else second).acquire(ALICE, "sse")
        except RateLimitExceeded:
            return False
        return True

    granted = await asyncio.gather(*(attempt(i) for i in range(50)))
    assert sum(granted) == 5


async def test_unlimited_and_anonymous_are_counted_locally_only(
        make_leases: LeasesFactory) -> None:
    """Cap 0 means unlimited; anonymous callers are not capped; both still show in the gauge."""
    leases = make_leases(max_streams=0)
    many = [await leases.acquire(ALICE, "sse") for _ in range(20)]
    assert not any(lease.stored for lease in many)
    assert await leases.open_count(ALICE, "streams") == 20
    capped = make_leases()
    anon = [await capped.acquire(ANONYMOUS, "sse") for _ in range(10)]
    assert capped.metrics is not None
    assert capped.metrics.leases.labels("sse")._value.get() == 10
    for lease in many + anon:
        await lease.release()
    assert capped.metrics.leases.labels("sse")._value.get() == 0


async def test_thousand_open_close_cycles_leak_nothing(make_leases: LeasesFactory) -> None:
    """1,000 acquire/release cycles end with no lease held anywhere and the gauge at zero."""
    leases = make_leases(max_streams=2)
    for i in range(1000):
        lease = await leases.acquire(ALICE, "sse" if i % 2 else "chat")
        await lease.release()
    assert leases.held == 0
    assert await leases.open_count(ALICE, "streams") == 0
    assert leases.metrics is not None
    assert leases.metrics.leases.labels("sse")._value.get() == 0
    pair = [await leases.acquire(ALICE, "sse") for _ in range(2)]
    for lease in pair:
        await lease.release()


async def test_a_refresh_overtaken_by_the_release_does_not_bring_the_lease_back(
        make_leases: LeasesFactory) -> None:
    """A heartbeat batch can reach the store after the lease's release (another Redis
    connection's batch may overtake it): the released lease stays gone."""
    leases = make_leases()
    lease = await leases.acquire(ALICE, "sse")
    assert lease.key is not None and lease.member is not None
    key, member = lease.key, lease.member
    await lease.release()
    await leases.store.refresh([(key, member)], leases.ttl_ms)  # the late heartbeat
    assert await leases.open_count(ALICE, "streams") == 0


async def test_unrefreshed_leases_expire_and_heartbeat_keeps_them() -> None:
    """With an injected clock: refreshed leases stay, forgotten ones are reclaimed after TTL."""
    clock = FakeClock()
    leases = StreamLeases(MemoryLeaseStore(clock), RateLimitSettings(
        max_streams=2, lease_ttl_s=30), prefix=PREFIX)
    held = [await leases.acquire(ALICE, "sse") for _ in range(2)]
    for _ in range(5):
        clock.now += 20
        await leases.refresh()
        with pytest.raises(RateLimitExceeded):
            await leases.acquire(ALICE, "sse")
    # A "dead process": the leases stay held but nobody refreshes them any more.
    clock.now += 30
    assert await leases.open_count(ALICE, "streams") == 0
    fresh = await leases.acquire(ALICE, "sse")
    for lease in [*held, fresh]:
        await lease.release()


@pytest.mark.parametrize("backend", ["redis"])
async def test_lease_keys_have_ttls(make_leases: LeasesFactory,
                                    raw_redis: aioredis.Redis) -> None:
    """lgw:lease:* keys expire: a crashed process can leave nothing behind for good."""
    leases = make_leases()
    held = [await leases.acquire(p, k) for p in (ALICE, BOB) for k in ("sse", "ws")]
    await leases.refresh()
    keys = sorted([k async for k in raw_redis.scan_iter(match="lgw:lease:*")])
    assert keys == [b"lgw:lease:streams:jwt:alice", b"lgw:lease:streams:jwt:bob",
                    b"lgw:lease:ws:jwt:alice", b"lgw:lease:ws:jwt:bob"]
    assert await assert_all_keys_have_ttl(raw_redis) == 4
    for lease in held:
        await lease.release()
    assert [k async for k in raw_redis.scan_iter(match="lgw:lease:*")] == []


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_down_fails_open_or_closed(make_leases: LeasesFactory,
                                               redis_server: RedisServer) -> None:
    """Lease store unreachable: open grants a lease (stored once Redis is back), closed
    answers 503."""
    opened = make_leases()
    closed = make_leases(failure_mode="closed")
    redis_server.kill()
    lease = await opened.acquire(ALICE, "sse")
    assert lease.stored  # the heartbeat adds it when Redis answers again
    await lease.release()
    with pytest.raises(DownstreamUnavailable):
        await closed.acquire(ALICE, "sse")
    redis_server.start()


CRASHING_HOLDER = textwrap.dedent("""
    import asyncio, sys
    from luki_gateway.auth.principal import Principal
    from luki_gateway.ratelimit.batch import ScriptBatch
    from luki_gateway.ratelimit.lease_store import RedisLeaseStore
    from luki_gateway.ratelimit.leases import StreamLeases
    from luki_gateway.settings import RateLimitSettings
    import redis.asyncio as aioredis

    async def main() -> None:
        client = aioredis.Redis.from_url(sys.argv[1], socket_timeout=1)
        leases = StreamLeases(RedisLeaseStore(ScriptBatch(client, timeout_s=1, what="p")),
                              RateLimitSettings(max_streams=3, lease_ttl_s=1.5), prefix="lgw:")
        alice = Principal(id="jwt:alice", kind="jwt", subject="alice", scopes=frozenset())
        for _ in range(3):
            await leases.acquire(alice, "sse")
        print("ready", flush=True)
        await leases.heartbeat()

    asyncio.run(main())
""")


@pytest.mark.parametrize("backend", ["redis"])
async def test_killed_process_leases_are_reclaimed(make_leases: LeasesFactory,
                                                   redis_url: str, tmp_path: Path) -> None:
    """A holder SIGKILLed with 3 open streams: its heartbeat kept them; after TTL they free."""
    script = tmp_path / "holder.py"
    script.write_text(CRASHING_HOLDER)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), redis_url, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            assert (await proc.stdout.readline()).strip() == b"ready"
        leases = make_leases(lease_ttl_s=1.5)
        loop = asyncio.get_running_loop()
        alive_until = loop.time() + 2.5  # longer than the TTL: only the heartbeat explains it
        while loop.time() < alive_until:
            with pytest.raises(RateLimitExceeded):
                await leases.acquire(ALICE, "sse")
            await asyncio.sleep(0.25)
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = loop.time()
        async with asyncio.timeout(5):
            while True:
                try:
                    lease = await leases.acquire(ALICE, "sse")
                    break
                except RateLimitExceeded:
                    await asyncio.sleep(0.05)
        assert loop.time() - killed_at <= 1.5 + 0.5
        await lease.release()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_heartbeat_puts_back_leases_the_store_lost(make_leases: LeasesFactory,
                                                         backend: str,
                                                         request: pytest.FixtureRequest
                                                         ) -> None:
    """Leases gone from the store while still held (Redis restarted empty) are added back
    by the next heartbeat; released ones are not."""
    leases = make_leases(max_streams=2)
    held = [await leases.acquire(ALICE, "sse") for _ in range(2)]
    if backend == "redis":
        request.getfixturevalue("redis_server").flushall()
    else:
        assert isinstance(leases.store, MemoryLeaseStore)
        leases.store._sets.clear()
    assert await leases.open_count(ALICE, "streams") == 0
    await held[1].release()
    await leases.refresh()
    assert await leases.open_count(ALICE, "streams") == 1
    await held[0].release()
    assert await leases.open_count(ALICE, "streams") == 0


class _SlowRestore(MemoryLeaseStore):
    """A memory store whose restore waits for a go (a slow round trip)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.entered = asyncio.Event()
        self.calls: list[str] = []

    async def restore(self, items: Sequence[tuple[str, str]], ttl_ms: int) -> None:
        self.calls.append("restore")
        self.entered.set()
        await self.go.wait()
        await super().restore(items, ttl_ms)

    async def release(self, key: str, member: str) -> None:
        self.calls.append("release")
        await super().release(key, member)


async def test_a_release_during_a_restore_lands_after_it() -> None:
    """A lease released while the heartbeat is putting it back is released after the
    restore reaches the store (on Redis the two may take different connections)."""
    store = _SlowRestore()
    leases = StreamLeases(store, RateLimitSettings(max_streams=2), prefix=PREFIX)
    lease = await leases.acquire(ALICE, "sse")
    store._sets.clear()  # the store lost it
    heartbeat = asyncio.create_task(leases.refresh())
    await store.entered.wait()
    release = asyncio.create_task(lease.release())
    await asyncio.sleep(0.05)
    assert store.calls == ["restore"]  # the release waits
    store.go.set()
    await asyncio.gather(heartbeat, release)
    assert store.calls == ["restore", "release"]
    assert await leases.open_count(ALICE, "streams") == 0
