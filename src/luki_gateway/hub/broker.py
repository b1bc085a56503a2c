"""Broker: how a published event reaches every subscriber on every process.

``MemoryBroker`` (embedded default) stores and delivers in-process. ``RedisBroker`` stores in
a Redis Stream and publishes on ``<prefix>ch:<channel>`` in one script, and each process keeps
one pattern subscription (``<prefix>ch:*``), never one per client. When Redis is lost, the
listener reconnects with backoff; meanwhile local publishes still reach local subscribers, and
after the reconnect subscribers get a ``gap`` notice (events published elsewhere during the
outage never reached Redis) and every locally watched channel is caught up from history.
A publish that fails on Redis while the listeners stay connected (a short freeze, one timed
out call) is announced once Redis answers again: every process then sends the subscribers of
those channels the same ``gap``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import redis.asyncio as aioredis
import structlog
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from .event import Event
from .history import IdClock, MemoryHistory, Recovery, RedisHistory, format_id

if TYPE_CHECKING:
    from .hub import Hub

log = structlog.get_logger("luki.hub.broker")

BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0
# A pub/sub link silent this long is probed with PING; no answer as long again: reconnect.
LIVENESS_S = 5.0
CLOSE_WAIT_S = 1.0
_REDIS_FAILURES = (RedisError, OSError, TimeoutError)
# Pub/sub channel (under ``<prefix>ch:``) of "these channels had events that reached one
# process only": not a valid channel name, so no client can publish or subscribe to it.
LOCAL_ONLY_CHANNEL = "!local-only"
# Past this many channels in one announcement it names none: every channel gets the gap.
LOCAL_ONLY_MAX = 1000


class Broker(Protocol):
    """Publish to all processes, and answer resume requests from history."""

    async def publish(self, channel: str, name: str | None, data: str) -> Event:
        """Store ``data`` (compact JSON) under a new id and deliver it everywhere."""

    async def recover(self, channel: str, last_id: str) -> Recovery:
        """The events of ``channel`` after ``last_id``."""

    async def start(self) -> None:
        """Begin listening (no-op in memory)."""

    async def close(self) -> None:
        """Stop listening."""

    @property
    def connected(self) -> bool:
        """False while cross-process delivery is interrupted."""


class MemoryBroker:
    """One process: history ring + direct delivery."""

    def __init__(self, hub: Hub, history: MemoryHistory) -> None:
        self.hub = hub
        self.history = history
        self.connected = True

    async def publish(self, channel: str, name: str | None, data: str) -> Event:
        """Store and deliver locally."""
        event = self.history.append(channel, name, data)
        self.hub.deliver(event)
        return event

    async def recover(self, channel: str, last_id: str) -> Recovery:
        """From the in-memory ring."""
        return self.history.since(channel, last_id)

    async def start(self) -> None:
        """Nothing to start."""

    async def close(self) -> None:
        """Nothing to close."""


class RedisBroker:
    """Many processes: Redis Stream history + one pattern subscription per process."""

    def __init__(self, hub: Hub, history: RedisHistory,
                 make_listener_client: Callable[[], aioredis.Redis],
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 liveness_s: float = LIVENESS_S) -> None:
        self.hub = hub
        self.history = history
        self._make_client = make_listener_client
        self._sleep = sleep
        self.liveness_s = liveness_s
        self._task: asyncio.Task[None] | None = None
        self._ids = IdClock()  # ids for events published locally while Redis is down
        # Channels of events that reached only this process, until announced to all.
        self._local_only: set[str] | None = None
        self._announcer: asyncio.Task[None] | None = None
        self.connected = False
        self.reconnects = 0
        self._subscribed = asyncio.Event()

    async def publish(self, channel: str, name: str | None, data: str) -> Event:
        """Through Redis (our own listener delivers it here too); when Redis fails, here only
        (and the channel is announced once Redis answers, see ``_announce``)."""
        try:
            return await self.history.append(channel, name, data)
        except _REDIS_FAILURES as exc:
            log.warning("publish fell back to local delivery", channel=channel,
                        error=type(exc).__name__)
        event = Event(channel, format_id(self._ids.next()), name, data)
        self.hub.deliver(event)
        self._note_local_only(channel)
        return event

    def _note_local_only(self, channel: str) -> None:
        """Remember that ``channel`` had an event the other processes never got; the
        announcer tells them (and this process's listener) once Redis answers again."""
        found = self._local_only
        if found is None:
            found = self._local_only = set()
        if len(found) < LOCAL_ONLY_MAX:
            found.add(channel)
        if self._announcer is None:
            self._announcer = asyncio.get_running_loop().create_task(self._announce())

    async def _announce(self) -> None:
        """Publish the local-only channels on ``LOCAL_ONLY_CHANNEL`` (retried with backoff);
        runs until none are left, so every local-only event is announced after it happened."""
        backoff = BACKOFF_FIRST_S
        try:
            while self._local_only:
                await self._sleep(backoff)
                channels, self._local_only = self._local_only, None
                payload = "" if len(channels) >= LOCAL_ONLY_MAX else "\n".join(channels)
                try:
                    await self.history.client.publish(
                        self.history.pubsub_key(LOCAL_ONLY_CHANNEL), payload)
                    backoff = BACKOFF_FIRST_S
                except _REDIS_FAILURES:
                    for channel in channels:  # again next time, with any newer ones
                        self._note_local_only(channel)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
        finally:
            self._announcer = None

    async def recover(self, channel: str, last_id: str) -> Recovery:
        """From the Redis Stream; a Redis failure is reported as a gap (events may be lost)."""
        try:
            return await self.history.since(channel, last_id)
        except _REDIS_FAILURES:
            return Recovery((), "gap")

    async def start(self) -> None:
        """Start the listener and wait briefly for its first subscription."""
        self._task = asyncio.get_running_loop().create_task(self._listen())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout=2.0)

    async def close(self) -> None:
        """Stop the listener (bounded: a frozen Redis cannot hold up shutdown)."""
        tasks = {task for task in (self._task, self._announcer) if task is not None}
        self._task = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_WAIT_S)

    async def _listen(self) -> None:
        backoff = BACKOFF_FIRST_S
        first = True
        while True:
            client = self._make_client()
            pubsub = client.pubsub()
            try:
                async with asyncio.timeout(self.liveness_s):
                    await pubsub.psubscribe(f"{self.history.prefix}ch:*")
                    if not first:
                        self.reconnects += 1
                        self.hub.notify_outage()
                        await self._catch_up()
                        log.info("redis pub/sub reconnected", reconnects=self.reconnects)
                first = False
                self.connected = True
                self._subscribed.set()
                backoff = BACKOFF_FIRST_S
                await self._relay(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.connected:
                    log.warning("redis pub/sub lost; local delivery continues",
                                error=type(exc).__name__)
                self.connected = False
                first = False
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(),  # type: ignore[no-untyped-call,unused-ignore]
                                           CLOSE_WAIT_S)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.aclose(), CLOSE_WAIT_S)
            await self._sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _relay(self, pubsub: PubSub) -> None:
        """Deliver pattern messages; a silent link is probed with PING and dropped if dead."""
        strip = len(self.history.prefix) + 3
        local_only = self.history.pubsub_key(LOCAL_ONLY_CHANNEL).encode()
        probe_after = self.liveness_s
        loop = asyncio.get_running_loop()
        heard = loop.time()
        probed: float | None = None
        while True:
            message = await pubsub.get_message(timeout=min(1.0, probe_after))
            now = loop.time()
            if message is not None:
                heard, probed = now, None
                if message["type"] != "pmessage":
                    continue
                if message["channel"] == local_only:
                    names = message["data"].decode()
                    self.hub.notify_outage(names.split("\n") if names else None)
                    continue
                channel = message["channel"][strip:].decode()
                self.hub.deliver_once(Event.from_wire(channel, message["data"]))
                continue
            if probed is not None and now - probed > self.liveness_s:
                raise TimeoutError("redis did not answer PING on the pub/sub link")
            if probed is None and now - heard > probe_after:
                probed = now
                await pubsub.ping()

    async def _catch_up(self) -> None:
        """Deliver what was stored while this process was not listening."""
        for channel, last_id in self.hub.last_delivered_ids().items():
            recovery = await self.history.since(channel, last_id)
            for event in recovery.events:
                self.hub.deliver_once(event)
