"""History and resume: ids, trimming by count and age, gap and reset, both twins."""

from __future__ import annotations

import redis.asyncio as aioredis

from luki_gateway.hub.history import IdClock, MemoryHistory, RedisHistory, parse_id


class FakeClock:
    """A settable clock (seconds) for age-based expiry."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_ids_are_monotonic_even_if_the_clock_goes_back() -> None:
    """Ids keep growing when the clock stalls or steps backwards."""
    clock = FakeClock()
    ids = IdClock(clock)
    first = ids.next()
    clock.now -= 5
    second = ids.next()
    clock.now += 10
    third = ids.next()
    assert first < second < third
    assert parse_id("12-3") == (12, 3)
    assert parse_id("12") is None and parse_id("a-1") is None and parse_id("-1") is None


def test_memory_history_count_and_age() -> None:
    """Last N kept; older ids get a gap; expired entries vanish; unknown channel is reset."""
    clock = FakeClock()
    history = MemoryHistory(size=3, ttl_s=60, clock=clock)
    events = [history.append("broadcast:h", None, f'{{"n":{n}}}') for n in range(5)]
    ok = history.since("broadcast:h", events[2].id)
    assert (ok.status, [e.id for e in ok.events]) == ("ok", [events[3].id, events[4].id])
    gap = history.since("broadcast:h", events[0].id)
    assert (gap.status, len(gap.events)) == ("gap", 3)
    assert history.since("broadcast:none", events[0].id).status == "reset"
    assert history.since("broadcast:h", "99999999999999-0").status == "reset"
    clock.now += 61
    expired = history.since("broadcast:h", events[3].id)
    assert (expired.status, expired.events) == ("gap", [])
    assert history.since("broadcast:h", events[4].id).status == "ok"
    history.prune()
    assert history.since("broadcast:h", events[4].id).status == "reset"


async def test_redis_history(redis_url: str) -> None:
    """Stream ids, MAXLEN ~ trimming reported as a gap, TTL on every history key."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        history = RedisHistory(client, "lgw:", size=10, ttl_s=300)
        events = [await history.append("broadcast:r", "tick", f'{{"n":{n}}}')
                  for n in range(400)]
        assert [parse_id(e.id) for e in events] == sorted(parse_id(e.id) for e in events)
        recent = await history.since("broadcast:r", events[397].id)
        assert recent.status == "ok"
        assert [(e.id, e.name, e.data) for e in recent.events] == [
            (e.id, "tick", e.data) for e in events[398:]]
        assert (await history.since("broadcast:r", events[0].id)).status == "gap"
        assert (await history.since("broadcast:missing", events[0].id)).status == "reset"
        assert await client.xlen("lgw:hist:broadcast:r") < 400
        assert 0 < await client.ttl("lgw:hist:broadcast:r") <= 300
    finally:
        await client.aclose()
