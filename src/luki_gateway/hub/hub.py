"""The streaming hub: who is subscribed to what on this process, fan-out, heartbeat, shutdown.

One ``Hub`` per app (``app[HUB]``), opened by ``hub_ctx``. Fan-out hands each event's shared
bytes to every local subscriber without awaiting any socket; one sweep task per process pings
WebSocket peers, sends SSE keep-alive comments, closes dead or lost connections and ends those
whose credentials expired (no per-connection timers or tasks). Connections of an API key
that gets revoked end as soon as the key store learns of it (``close_revoked``); the sweep
ends any that registered in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Callable, Container, Iterable
from typing import Any

import redis.asyncio as aioredis
import structlog
from aiohttp import web

from ..auth.api_keys import KEY_STORE
from ..errors import Unauthenticated
from ..metrics import REGISTRY
from ..redis_client import redis_of
from ..settings import SETTINGS, HubSettings, Settings
from .broker import Broker, MemoryBroker, RedisBroker
from .channels import Policy, policy_for
from .event import Event
from .history import IdKey, MemoryHistory, Recovery, RedisHistory, parse_id
from .metrics import HubMetrics
from .subscriber import Subscriber

log = structlog.get_logger("luki.hub")

# Credential expiry is noticed within this long (pings go out every ws_heartbeat_s).
SWEEP_MAX_INTERVAL_S = 1.0
REVOKED_MESSAGE = "API key revoked"
# A socket can refresh its credentials in place; an SSE client can only come back.
EXPIRED_MESSAGES = {
    "ws": "credentials expired; send an auth message with a fresh token before expiry",
    "sse": "credentials expired; reconnect with a fresh ticket or token",
}


class _Group:
    """One channel's local subscribers, by transport (WebSocket frames are shared whole)."""

    __slots__ = ("sse", "ws")

    def __init__(self) -> None:
        self.ws: dict[Subscriber, None] = {}
        self.sse: dict[Subscriber, None] = {}

    def of(self, sub: Subscriber) -> dict[Subscriber, None]:
        return self.ws if sub.kind == "ws" else self.sse

    def __len__(self) -> int:
        return len(self.ws) + len(self.sse)


class Hub:
    """Local subscriptions and delivery; the broker carries events between processes."""

    def __init__(self, settings: HubSettings, metrics: HubMetrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        # The SSE reconnect hint as an event field, one object shared by every stream.
        self.sse_retry_field = b"retry: %d\n" % settings.sse_retry_ms
        self.broker: Broker = MemoryBroker(self, MemoryHistory(
            settings.history_size, settings.history_ttl_s, clock))
        self.connections: dict[str, Subscriber] = {}
        self._channels: dict[str, _Group] = {}
        # Subscribers replaying history: live events are buffered until the replay is sent.
        self._pending: dict[str, dict[Subscriber, list[Event]]] = {}
        # Subscribers fresh from a replay: events up to this id already reached them (Redis
        # may still hand the listener older ones); cleared by the first newer event.
        self._replayed: dict[str, dict[Subscriber, IdKey]] = {}
        self._policies: dict[str, Policy] = {}
        self._last: dict[str, IdKey] = {}
        self.slow_actions: Tally[str] = Tally()
        self.published = 0
        self.delivered = 0
        self.draining = False
        self._sweep: asyncio.Task[None] | None = None
        # Hashes of API keys known revoked (the key store's set; hub_ctx links it).
        self.revoked: Container[str] = frozenset()

    # -- connections -----------------------------------------------------------------------

    def register(self, sub: Subscriber) -> None:
        """Track a new connection (stats, heartbeat, shutdown)."""
        self.connections[sub.connection_id] = sub
        gauge = self.metrics.ws_connections if sub.kind == "ws" else self.metrics.sse_connections
        gauge.inc()

    def forget(self, sub: Subscriber) -> None:
        """Drop a closed connection and all its subscriptions."""
        if self.connections.pop(sub.connection_id, None) is None:
            return
        gauge = self.metrics.ws_connections if sub.kind == "ws" else self.metrics.sse_connections
        gauge.dec()
        if sub.subscribed:
            for channel in list(sub.channels):
                self._remove(sub, channel)

    # -- subscriptions ---------------------------------------------------------------------

    def subscribe(self, sub: Subscriber, channel: str) -> None:
        """Add ``sub`` to ``channel`` for live events from now on."""
        sub.channels.setdefault(channel, "")
        group = self._channels.get(channel)
        if group is None:
            group = self._channels[channel] = _Group()
        group.of(sub)[sub] = None

    async def subscribe_from(self, sub: Subscriber, channel: str, last_id: str) -> Recovery:
        """Replay ``channel`` after ``last_id``, then continue live with nothing lost or doubled.

        Live events that arrive during the replay are held back and sent after it, minus
        those the replay already contained.
        """
        sub.channels.setdefault(channel, "")
        held: list[Event] = []
        self._pending.setdefault(channel, {})[sub] = held
        try:
            recovery = await self.broker.recover(channel, last_id)
        finally:
            pending = self._pending.get(channel)
            if pending is not None:
                pending.pop(sub, None)
                if not pending:
                    del self._pending[channel]
        if sub.closed or channel not in sub.channels:
            return recovery  # closed or unsubscribed while the history was read
        if recovery.status != "ok":
            sub.push_frame(sub.notice_frame({"type": recovery.status, "channel": channel,
                                             "last_id": last_id}))
        policy = self.policy(channel)
        newest = parse_id(last_id) or (0, 0)
        for event in recovery.events:
            sub.push_event(event, policy)
            newest = max(newest, parse_id(event.id) or newest)
        for event in held:
            key = parse_id(event.id) or (0, 0)
            if key > newest:
                sub.push_event(event, policy)
                newest = key
        self.subscribe(sub, channel)
        self._replayed.setdefault(channel, {})[sub] = newest
        return recovery

    def unsubscribe(self, sub: Subscriber, channel: str) -> bool:
        """Remove ``sub`` from ``channel``; False when it was not subscribed."""
        if channel not in sub.channels:
            return False
        del sub.channels[channel]
        self._remove(sub, channel)
        return True

    def _remove(self, sub: Subscriber, channel: str) -> None:
        group = self._channels.get(channel)
        if group is not None:
            group.of(sub).pop(sub, None)
            if not group:
                del self._channels[channel]
                self._policies.pop(channel, None)
                self._last.pop(channel, None)
        for marks in (self._pending, self._replayed):
            found = marks.get(channel)
            if found is not None:
                found.pop(sub, None)
                if not found:
                    del marks[channel]

    def local_count(self, channel: str) -> int:
        """Subscribers of ``channel`` on this process."""
        subs = self._channels.get(channel)
        return 0 if subs is None else len(subs)

    def policy(self, channel: str) -> Policy:
        """The slow-consumer policy of ``channel`` (cached while it has subscribers)."""
        found = self._policies.get(channel)
        if found is None:
            found = policy_for(channel, self.settings)
            if channel in self._channels:
                self._policies[channel] = found
        return found

    # -- delivery --------------------------------------------------------------------------

    async def publish(self, channel: str, name: str | None, data: str) -> tuple[Event, int]:
        """Publish ``data`` (compact JSON text) to every subscriber on every process."""
        event = await self.broker.publish(channel, name, data)
        self.published += 1
        self.metrics.published.inc()
        return event, self.local_count(channel)

    def deliver(self, event: Event) -> int:
        """Hand ``event`` to every local subscriber of its channel; returns how many took it."""
        channel = event.channel
        if self._pending:
            for held in self._pending.get(channel, {}).values():
                held.append(event)
        group = self._channels.get(channel)
        if not group:
            return 0
        started = time.perf_counter()
        policy = self.policy(channel)
        ws_subs, sse_subs = list(group.ws), list(group.sse)
        if self._replayed and channel in self._replayed:
            skip = self._already_replayed(event)
            ws_subs = [sub for sub in ws_subs if sub not in skip]
            sse_subs = [sub for sub in sse_subs if sub not in skip]
        ws = sse = 0
        if ws_subs:
            frame = event.ws
            for sub in ws_subs:
                if sub.push_prepared(frame, event, policy):
                    ws += 1
        for sub in sse_subs:
            if sub.push_event(event, policy):
                sse += 1
        metrics = self.metrics
        if ws:
            metrics.delivered_ws.inc(ws)
        if sse:
            metrics.delivered_sse.inc(sse)
        self.delivered += ws + sse
        metrics.fanout.observe(time.perf_counter() - started)
        return ws + sse

    def _already_replayed(self, event: Event) -> set[Subscriber]:
        """Subscribers whose replay already held ``event``; forgets the ones now past it."""
        marks = self._replayed[event.channel]
        key = parse_id(event.id) or (0, 0)
        skip = {sub for sub, mark in marks.items() if key <= mark}
        for sub in [sub for sub in marks if sub not in skip]:
            del marks[sub]
        if not marks:
            del self._replayed[event.channel]
        return skip

    def deliver_once(self, event: Event) -> int:
        """``deliver``, skipping events already delivered here (catch-up after reconnect)."""
        channel = event.channel
        if channel not in self._channels and channel not in self._pending:
            return 0
        key = parse_id(event.id)
        if key is not None:
            last = self._last.get(channel)
            if last is not None and key <= last:
                return 0
            if channel in self._channels:
                self._last[channel] = key
        return self.deliver(event)

    def notify_outage(self, channels: Iterable[str] | None = None) -> None:
        """After a broker outage: tell subscribers their channels may have missed events.

        Events published on other processes while Redis was away never reached it; the
        ``gap`` notice lets clients reload state (what Redis did store is caught up next).
        ``channels`` limits it to those (a publish that reached one process only).
        """
        groups = self._channels
        # A copy: a notice to a full queue may close its connection, which edits the dict.
        for channel in list(groups) if channels is None else channels:
            group = groups.get(channel)
            if group is None:
                continue
            notice = {"type": "gap", "channel": channel, "reason": "broker_reconnected"}
            for sub in (*group.ws, *group.sse):
                sub.push_frame(sub.notice_frame(notice))

    def last_delivered_ids(self) -> dict[str, str]:
        """Channel -> last id delivered here, for every channel with local subscribers."""
        return {channel: f"{key[0]}-{key[1]}" for channel, key in self._last.items()
                if channel in self._channels}

    def count_slow(self, action: str) -> None:
        """Record one slow-consumer policy action."""
        self.slow_actions[action] += 1
        self.metrics.slow_consumers.labels(action).inc()

    # -- heartbeat, expiry, shutdown -------------------------------------------------------

    def start(self) -> None:
        """Start the one sweep task of this process."""
        self._sweep = asyncio.get_running_loop().create_task(self._run_sweep())

    async def _run_sweep(self) -> None:
        settings = self.settings
        interval = min(settings.ws_heartbeat_s, settings.sse_heartbeat_s, SWEEP_MAX_INTERVAL_S)
        now = time.monotonic()
        next_ping = now + settings.ws_heartbeat_s
        next_comment = now + settings.sse_heartbeat_s
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            ping = now >= next_ping
            if ping:
                next_ping = now + settings.ws_heartbeat_s
            comment = now >= next_comment
            if comment:
                next_comment = now + settings.sse_heartbeat_s
            try:
                self.sweep(ping=ping, sse_ping=comment)
            except Exception:
                log.exception("hub sweep failed")

    def sweep(self, *, ping: bool, sse_ping: bool = False) -> None:
        """One pass: drop lost connections, expire credentials, heartbeat WS / SSE peers.

        WebSocket peers that did not answer the previous ping are closed; SSE streams get a
        keep-alive comment (``sse_heartbeat_s``).
        """
        now = self.clock()
        deepest = 0
        revoked = self.revoked
        for sub in list(self.connections.values()):
            if sub.protocol.transport is None:
                sub.close()  # the client left: wakes its handler, frees its subscriptions
                continue
            key_hash = sub.principal.key_hash
            if key_hash is not None and key_hash in revoked:
                # Registered after close_revoked ran (authenticated just before).
                sub.close(error=Unauthenticated(REVOKED_MESSAGE), code=4401)
                continue
            expires_at = sub.principal.expires_at
            if expires_at is not None and expires_at <= now:
                sub.close(error=Unauthenticated(EXPIRED_MESSAGES[sub.kind]), code=4401)
                continue
            if ping if sub.kind == "ws" else sse_ping:
                sub.heartbeat()
            deepest = max(deepest, sub.queue_depth)
        self.metrics.queue_depth.set(deepest)
        if ping and isinstance(self.broker, MemoryBroker):
            self.broker.history.prune()  # idle channels' rings, once per heartbeat interval

    def close_revoked(self, key_hashes: frozenset[str]) -> None:
        """End every connection authenticated by one of these API keys, revoked just now
        (WS 4401 / SSE ``error``, as for expired credentials)."""
        for sub in list(self.connections.values()):
            if sub.principal.key_hash in key_hashes:
                sub.close(error=Unauthenticated(REVOKED_MESSAGE), code=4401)

    def shutdown(self) -> None:
        """Tell every open stream to reconnect elsewhere (WS 1012 / SSE ``reconnect``)."""
        self.draining = True
        for sub in list(self.connections.values()):
            sub.close(code=1012)

    async def close(self) -> None:
        """Stop the sweep; drop whatever connections are left."""
        if self._sweep is not None:
            self._sweep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweep
        for sub in list(self.connections.values()):
            sub.close()

    # -- stats -----------------------------------------------------------------------------

    def stats(self, top: int = 50) -> dict[str, Any]:
        """What an operator asks when a live event misbehaves (this process only)."""
        kinds = Tally(sub.kind for sub in self.connections.values())
        queued = [sub for sub in self.connections.values() if sub.queue_depth]
        busiest = sorted(self._channels.items(), key=lambda item: -len(item[1]))[:top]
        return {
            "pid": os.getpid(),
            "draining": self.draining,
            "connections": {"ws": kinds.get("ws", 0), "sse": kinds.get("sse", 0)},
            "channels": {"count": len(self._channels),
                         "top": [{"channel": name, "subscribers": len(subs)}
                                 for name, subs in busiest]},
            "queues": {
                "connections_with_backlog": len(queued),
                "max_depth": max((sub.queue_depth for sub in queued), default=0),
                "queued_bytes": sum(sub.queued_bytes for sub in queued),
                "backlogged": [
                    {"connection_id": sub.connection_id, "transport": sub.kind,
                     "principal": sub.principal.display or sub.principal.id,
                     "depth": sub.queue_depth, "bytes": sub.queued_bytes,
                     "channels": len(sub.channels)}
                    for sub in sorted(queued, key=lambda sub: -sub.queued_bytes)[:10]],
                "limits": {"messages": self.settings.queue_max_messages,
                           "bytes": self.settings.queue_max_bytes},
            },
            "slow_consumer_actions": dict(self.slow_actions),
            "events": {"published": self.published, "delivered": self.delivered},
            "broker": {"kind": "redis" if isinstance(self.broker, RedisBroker) else "memory",
                       "connected": self.broker.connected,
                       "reconnects": getattr(self.broker, "reconnects", 0)},
        }


HUB = web.AppKey("hub", Hub)


def _listener_client(settings: Settings) -> aioredis.Redis:
    """A pub/sub connection: bounded connect time, but no read timeout while idle."""
    return aioredis.Redis.from_url(settings.redis_url,
                                   socket_connect_timeout=settings.redis_timeout_s,
                                   socket_timeout=None, health_check_interval=0)


async def hub_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the streaming hub: broker, history, subscribers."""
    settings = app[SETTINGS]
    hub = Hub(settings.hub, HubMetrics.create(app[REGISTRY]))
    redis = redis_of(app)
    if redis is not None:
        history = RedisHistory(redis, settings.redis_prefix, settings.hub.history_size,
                               settings.hub.history_ttl_s)
        hub.broker = RedisBroker(hub, history, lambda: _listener_client(settings),
                                 liveness_s=settings.hub.redis_liveness_s)
    elif settings.workers > 1:
        log.warning("streaming hub without REDIS_URL under several workers: a publish reaches "
                    "only the subscribers of the worker that received it", workers=settings.workers)
    app[HUB] = hub
    store = app.get(KEY_STORE)
    if store is not None:
        hub.revoked = store.revoked
        store.revoked.listen(hub.close_revoked)
    await hub.broker.start()
    hub.start()
    yield
    if store is not None:
        store.revoked.unlisten(hub.close_revoked)
    await hub.close()
    await hub.broker.close()


async def close_streams(app: web.Application) -> None:
    """on_shutdown: every open stream gets its reconnect hint now, not after 60 s."""
    hub = app.get(HUB)
    if hub is not None:
        hub.shutdown()
