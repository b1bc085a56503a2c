"""Where stream leases live: a Redis sorted set per principal and group, or memory.

A lease is a member scored by its expiry time. Holders refresh the expiry by heartbeat;
members whose expiry passed (their process died) are pruned before every count, so a
crashed process's leases come back by themselves after one TTL. A live holder whose leases
the store lost (Redis restarted, or stayed away longer than the TTL) puts them back on its
next heartbeat. Keys expire one second after
their newest member would, so an idle key never outlives its leases.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .batch import LuaScript, ScriptBatch

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

ACQUIRE = LuaScript(_NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[2]) then return {0, held} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) + 1000)
return {1, held + 1}
""")

# KEYS and ARGV[2..] pair up: key i holds member i. Extends only members still there and
# returns the indexes of the others: a refresh that reaches Redis after the lease's release
# (another connection's batch may overtake it) must not bring the lease back, so the holder
# decides what to re-add (RESTORE) from what it still holds once the answer is in.
REFRESH = LuaScript(_NOW + """
local ttl = tonumber(ARGV[1])
local missing = {}
for i = 1, #KEYS do
  if redis.call('ZSCORE', KEYS[i], ARGV[i + 1]) then
    redis.call('ZADD', KEYS[i], now + ttl, ARGV[i + 1])
    redis.call('PEXPIRE', KEYS[i], ttl + 1000)
  else
    missing[#missing + 1] = i
  end
end
return missing
""")

# Puts back leases the store lost while their streams stayed open (Redis restarted empty,
# an outage longer than the TTL, or the lease was granted fail-open). No cap check: the
# streams are open already, and counting them is what keeps the cap honest.
RESTORE = LuaScript(_NOW + """
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], ttl + 1000)
end
return #KEYS
""")

RELEASE = LuaScript("""
return redis.call('ZREM', KEYS[1], ARGV[1])
""")

COUNT = LuaScript(_NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
""")

# One script call refreshes at most this many leases (the batch still sends them together).
REFRESH_CHUNK = 500


class LeaseStore(Protocol):
    """Storage of lease members; both implementations behave the same."""

    async def acquire(self, key: str, member: str, limit: int, ttl_ms: int) -> bool:
        """Add ``member`` unless ``limit`` live members are already held."""

    async def refresh(self, items: Sequence[tuple[str, str]], ttl_ms: int
                      ) -> list[tuple[str, str]]:
        """Push the expiry of every (key, member) still there to now + ttl; returns the
        items that were not there."""

    async def restore(self, items: Sequence[tuple[str, str]], ttl_ms: int) -> None:
        """Add every (key, member) with expiry now + ttl, whatever the cap."""

    async def release(self, key: str, member: str) -> None:
        """Remove ``member``."""

    async def count(self, key: str) -> int:
        """Live members under ``key``."""


class RedisLeaseStore:
    """Leases in Redis sorted sets, every call one coalesced EVALSHA."""

    def __init__(self, batch: ScriptBatch) -> None:
        self.batch = batch

    async def acquire(self, key: str, member: str, limit: int, ttl_ms: int) -> bool:
        """Add ``member`` unless the set already holds ``limit`` live members."""
        ok, _held = await self.batch.run(ACQUIRE, [key], [member, limit, ttl_ms])
        return bool(ok)

    async def refresh(self, items: Sequence[tuple[str, str]], ttl_ms: int
                      ) -> list[tuple[str, str]]:
        """Heartbeat: extend every lease still held by this process; returns the missing."""
        return [chunk[int(i) - 1]
                for chunk, indexes in await self._by_chunk(REFRESH, items, ttl_ms)
                for i in indexes]

    async def restore(self, items: Sequence[tuple[str, str]], ttl_ms: int) -> None:
        """Put lost leases back."""
        await self._by_chunk(RESTORE, items, ttl_ms)

    async def _by_chunk(self, script: LuaScript, items: Sequence[tuple[str, str]],
                        ttl_ms: int) -> list[tuple[Sequence[tuple[str, str]], Any]]:
        """Run ``script`` over ``items`` REFRESH_CHUNK at a time (keys, then ttl and
        members); each chunk with the script's answer."""
        answers = []
        for start in range(0, len(items), REFRESH_CHUNK):
            chunk = items[start:start + REFRESH_CHUNK]
            answers.append((chunk, await self.batch.run(script, [k for k, _ in chunk],
                                                        [ttl_ms, *(m for _, m in chunk)])))
        return answers

    async def release(self, key: str, member: str) -> None:
        """Remove the member now rather than waiting for its expiry."""
        await self.batch.run(RELEASE, [key], [member])

    async def count(self, key: str) -> int:
        """Live members (expired ones pruned first)."""
        return int(await self.batch.run(COUNT, [key], []))


class MemoryLeaseStore:
    """The in-memory twin (one process): member -> expiry per key; clock injectable."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._sets: dict[str, dict[str, float]] = {}

    def _live(self, key: str) -> dict[str, float]:
        members = self._sets.get(key, {})
        now = self.clock()
        for member in [m for m, exp in members.items() if exp <= now]:
            del members[member]
        if not members:
            self._sets.pop(key, None)
        return members

    async def acquire(self, key: str, member: str, limit: int, ttl_ms: int) -> bool:
        """Add ``member`` unless ``limit`` live members are held."""
        members = self._live(key)
        if len(members) >= limit:
            return False
        members[member] = self.clock() + ttl_ms / 1000
        self._sets[key] = members
        return True

    async def refresh(self, items: Sequence[tuple[str, str]], ttl_ms: int
                      ) -> list[tuple[str, str]]:
        """Extend each lease's expiry (never bringing back a released one); returns the
        items not held."""
        expiry = self.clock() + ttl_ms / 1000
        missing: list[tuple[str, str]] = []
        for key, member in items:
            members = self._sets.get(key)
            if members is not None and member in members:
                members[member] = expiry
            else:
                missing.append((key, member))
        return missing

    async def restore(self, items: Sequence[tuple[str, str]], ttl_ms: int) -> None:
        """Add each lease back, whatever the cap."""
        expiry = self.clock() + ttl_ms / 1000
        for key, member in items:
            self._sets.setdefault(key, {})[member] = expiry

    async def release(self, key: str, member: str) -> None:
        """Drop the member (and the key once empty)."""
        members = self._sets.get(key)
        if members is not None:
            members.pop(member, None)
            if not members:
                del self._sets[key]

    async def count(self, key: str) -> int:
        """Live members under ``key``."""
        return len(self._live(key))
