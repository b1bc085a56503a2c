"""Redis limiter: the sliding-window log of ``memory.py`` as one Lua script per decision.

One ``EVALSHA`` per decision (coalesced with the others of the same loop tick by
:class:`ScriptBatch`), Redis ``TIME`` inside the script so every process shares one clock,
every window checked before any is charged (stacked windows are atomic), and a TTL on every
key it writes (the window plus one second). Each admitted unit is one sorted-set member
scored by its admission time in milliseconds. Arguments: KEYS = one sorted set per window;
ARGV = cost, commit (1/0), a unique member token, and "limit,window_ms;..." per window.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Coroutine
from typing import Any

import redis.asyncio as aioredis

from ..bounded import remember
from .batch import LuaScript, ScriptBatch
from .decision import Decision, Window, WindowState

SLIDING_LOG = LuaScript("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cost = tonumber(ARGV[1])
local commit = ARGV[2] == '1'
local token = ARGV[3]
local limits, wins = {}, {}
for l, w in string.gmatch(ARGV[4], '(%d+),(%d+)') do
  limits[#limits + 1] = tonumber(l)
  wins[#wins + 1] = tonumber(w)
end
local counts = {}
local rejected = 0
local retry = 0
for i = 1, #KEYS do
  local limit, win = limits[i], wins[i]
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - win)
  local count = redis.call('ZCARD', KEYS[i])
  counts[i] = count
  if rejected == 0 and count + cost > limit then
    rejected = i
    if cost > limit then
      retry = win
    else
      local idx = count + cost - limit - 1
      local entry = redis.call('ZRANGE', KEYS[i], idx, idx, 'WITHSCORES')
      retry = tonumber(entry[2]) + win - now
    end
  end
end
local out = {rejected, retry}
for i = 1, #KEYS do
  local limit, win = limits[i], wins[i]
  local count = counts[i]
  if rejected == 0 and commit and cost > 0 then
    local args = {}
    for j = 1, cost do
      args[#args + 1] = now
      args[#args + 1] = token .. ':' .. j
    end
    redis.call('ZADD', KEYS[i], unpack(args))
    redis.call('PEXPIRE', KEYS[i], win + 1000)
    count = count + cost
  end
  local reset = 0
  if count > 0 then
    local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    reset = tonumber(oldest[2]) + win - now
  end
  out[#out + 1] = limit - count
  out[#out + 1] = reset
end
return out
""")


_KEY_CACHE = 10_000


class RedisLimiter:
    """Sliding-window log on Redis, shared by every process and host."""

    def __init__(self, redis: aioredis.Redis, batch: ScriptBatch, prefix: str) -> None:
        self.redis = redis
        self.batch = batch
        self.prefix = prefix
        # Members must be unique across processes: a random process tag plus a counter.
        self._tag = os.urandom(6).hex()
        self._seq = itertools.count()
        # Redis key names, prefixed and encoded once per window key (bounded).
        self._keys: dict[str, bytes] = {}

    def _encode_key(self, key: str) -> bytes:
        return remember(self._keys, key, (self.prefix + key).encode(), _KEY_CACHE)

    async def _evaluate(self, windows: tuple[Window, ...], cost: int, commit: bool
                        ) -> Decision:
        if not windows:
            return Decision(True, ())
        # Few, pre-encoded arguments: packing them is most of the client's CPU per call.
        encoded = self._keys
        keys = [encoded.get(w.key) or self._encode_key(w.key) for w in windows]
        spec = ";".join([w.spec for w in windows])
        args = [cost, b"1" if commit else b"0", f"{self._tag}:{next(self._seq)}".encode(),
                spec.encode()]
        raw = await self.batch.run(SLIDING_LOG, keys, args)
        rejected_index, retry_ms = int(raw[0]), int(raw[1])
        states = tuple(
            WindowState(w, max(0, int(raw[2 + 2 * i])), max(0, int(raw[3 + 2 * i])) / 1000)
            for i, w in enumerate(windows))
        if rejected_index:
            return Decision(False, states, windows[rejected_index - 1], retry_ms / 1000)
        return Decision(True, states)

    def decide(self, windows: tuple[Window, ...], cost: int) -> Coroutine[Any, Any, Decision]:
        """Charge ``cost`` to every window if all have room (atomic, one round trip)."""
        return self._evaluate(windows, cost, commit=True)  # its coroutine: one frame less

    async def peek(self, windows: tuple[Window, ...]) -> Decision:
        """Current state without charging (still one round trip)."""
        return await self._evaluate(windows, 0, commit=False)

    async def close(self) -> None:
        """Let round trips in flight finish."""
        await self.batch.close()
