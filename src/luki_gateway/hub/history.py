"""Channel history for resume: the last N events or T seconds per channel.

Event ids look like Redis Stream ids (``<ms>-<seq>``) in both twins: monotonic per channel
and, with Redis, the same on every process. A resume request names the last id the client
saw; the answer is the events after it plus a status: ``ok``, ``gap`` (some events after that
id were trimmed: what is left is sent, the rest is lost) or ``reset`` (the channel's history is
gone or the id is unknown: the client should reload its state).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis

from .event import Event

RecoveryStatus = Literal["ok", "gap", "reset"]
IdKey = tuple[int, int]


def parse_id(event_id: str) -> IdKey | None:
    """``"<ms>-<seq>"`` as a sortable pair; None when it is not an id."""
    ms, sep, seq = event_id.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit() or len(event_id) > 41:
        return None
    return int(ms), int(seq)


@dataclass(frozen=True, slots=True)
class Recovery:
    """What a resuming subscriber gets: the missed events and whether that is all of them."""

    events: Sequence[Event]
    status: RecoveryStatus


class IdClock:
    """Redis-style ids from a local clock: never going back, even when the clock does."""

    __slots__ = ("_clock", "last")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.last: IdKey = (0, 0)

    def next(self) -> IdKey:
        """The next id, greater than every id given before."""
        ms = int(self._clock() * 1000)
        last_ms, last_seq = self.last
        self.last = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        return self.last


def format_id(key: IdKey) -> str:
    """An id pair as its string form."""
    return f"{key[0]}-{key[1]}"


class _Ring:
    __slots__ = ("entries", "top", "touched", "trimmed")

    def __init__(self, size: int) -> None:
        self.entries: deque[tuple[IdKey, float, Event]] = deque(maxlen=max(size, 1))
        self.top: IdKey = (0, 0)
        self.trimmed: IdKey = (0, 0)
        self.touched = 0.0


class MemoryHistory:
    """The in-memory twin: one bounded ring per channel, expired by age."""

    def __init__(self, size: int, ttl_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.size = size
        self.ttl_s = ttl_s
        self._clock = clock
        self._ids = IdClock(clock)
        self._rings: dict[str, _Ring] = {}

    def append(self, channel: str, name: str | None, data: str) -> Event:
        """Give the event its id and keep it."""
        now = self._clock()
        key = self._ids.next()
        event = Event(channel, format_id(key), name, data)
        ring = self._rings.get(channel)
        if ring is None:
            ring = self._rings[channel] = _Ring(self.size)
        self._expire(ring, now)
        if self.size > 0:
            if len(ring.entries) == ring.entries.maxlen:
                ring.trimmed = ring.entries[0][0]
            ring.entries.append((key, now, event))
        else:
            ring.trimmed = key
        ring.top = key
        ring.touched = now
        return event

    def _expire(self, ring: _Ring, now: float) -> None:
        entries = ring.entries
        while entries and now - entries[0][1] > self.ttl_s:
            ring.trimmed = entries.popleft()[0]

    def since(self, channel: str, last_id: str) -> Recovery:
        """The events after ``last_id`` (see the module doc for the status)."""
        key = parse_id(last_id)
        ring = self._rings.get(channel)
        if key is None or ring is None or key > ring.top:
            return Recovery((), "reset")
        self._expire(ring, self._clock())
        events = [event for k, _, event in ring.entries if k > key]
        return Recovery(events, "gap" if key < ring.trimmed else "ok")

    def prune(self) -> None:
        """Forget channels idle for longer than the TTL (called by the hub's sweep)."""
        now = self._clock()
        stale = [name for name, ring in self._rings.items() if now - ring.touched > self.ttl_s]
        for name in stale:
            del self._rings[name]


# XADD + EXPIRE + PUBLISH in one atomic step: every process sees events in stream order.
APPEND_SCRIPT = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2], 'd', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', KEYS[2], id .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[3])
return id
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisHistory:
    """History in Redis Streams ``<prefix>hist:<channel>`` (MAXLEN ~ N, key TTL T)."""

    def __init__(self, client: aioredis.Redis, prefix: str, size: int, ttl_s: int) -> None:
        self.client = client
        self.prefix = prefix
        self.size = max(size, 1)
        self.ttl_s = ttl_s
        self._append = client.register_script(APPEND_SCRIPT)

    def stream_key(self, channel: str) -> str:
        """The history stream of ``channel``."""
        return f"{self.prefix}hist:{channel}"

    def pubsub_key(self, channel: str) -> str:
        """The pub/sub channel of ``channel``."""
        return f"{self.prefix}ch:{channel}"

    async def append(self, channel: str, name: str | None, data: str) -> Event:
        """Store and publish to every process in one round trip; returns the event."""
        raw = await self._append(
            keys=[self.stream_key(channel), self.pubsub_key(channel)],
            args=[self.size, name or "", data, self.ttl_s])
        return Event(channel, _text(raw), name, data)

    async def since(self, channel: str, last_id: str) -> Recovery:
        """The events after ``last_id`` (see the module doc for the status)."""
        key = parse_id(last_id)
        if key is None:
            return Recovery((), "reset")
        stream = self.stream_key(channel)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xinfo_stream(stream)
            pipe.xrange(stream, min=f"({format_id(key)}", max="+", count=self.size * 2 + 200)
            info, entries = await pipe.execute(raise_on_error=False)
        if isinstance(info, Exception):
            return Recovery((), "reset")  # no such key: expired or never written
        if isinstance(entries, Exception):
            raise entries
        top = parse_id(_text(info.get("last-generated-id", b"0-0"))) or (0, 0)
        if key > top:
            return Recovery((), "reset")
        first_entry = info.get("first-entry")
        first = parse_id(_text(first_entry[0])) if first_entry else None
        length = int(info.get("length", 0))
        added = int(info.get("entries-added", length + 1 if length >= self.size else length))
        # Trimming leaves no record of what it removed: an id older than the oldest kept one,
        # on a stream that lost entries, may have missed some (conservative: report a gap).
        trimmed = added > length and (first is None or key < first)
        events = []
        for raw_id, fields in entries:
            name = _text(fields.get(b"e", b""))
            events.append(Event(channel, _text(raw_id), name or None, _text(fields[b"d"])))
        return Recovery(events, "gap" if trimmed else "ok")
