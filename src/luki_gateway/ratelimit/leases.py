"""Concurrent-stream leases: at most N open streams per principal, across every process.

Usage (SSE/WS handlers, chat turns)::

    lease = await request.app[LEASES].acquire(principal, "sse")   # 429 when over the cap
    try:
        ...stream...
    finally:
        await lease.release()                                      # idempotent

Kinds ``sse`` and ``chat`` share the ``max_streams`` cap, ``ws`` has ``max_ws_per_user``;
0 means unlimited (then the lease is only counted locally, no Redis call). One heartbeat
task refreshes every lease this process holds every ``lease_ttl_s / 3`` in one coalesced
round trip; a process that dies stops refreshing and its leases expire after the TTL. Leases
the store lost while their streams stayed open (Redis restarted, an outage longer than the
TTL, or granted fail-open while Redis was down) are put back by the next heartbeat that
reaches Redis, so they count against the cap again.
Anonymous callers (auth disabled) are not capped: they share one identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Literal

import structlog
from aiohttp import web

from ..auth.principal import Principal
from ..errors import DownstreamUnavailable, RateLimitExceeded
from ..redis_client import redis_of
from ..settings import SETTINGS, RateLimitSettings
from .batch import BackendUnavailable, ErrorLog, ScriptBatch
from .lease_store import (
    ACQUIRE,
    COUNT,
    REFRESH,
    RELEASE,
    RESTORE,
    LeaseStore,
    MemoryLeaseStore,
    RedisLeaseStore,
)
from .metrics import RATELIMIT_METRICS, RateLimitMetrics

LeaseKind = Literal["sse", "ws", "chat"]
LEASE_GROUPS: dict[str, str] = {"sse": "streams", "chat": "streams", "ws": "ws"}

log = structlog.get_logger("luki.ratelimit")


class Lease:
    """One open stream's claim on its principal's cap; release it when the stream ends.

    A lease that is only counted here (unlimited or anonymous) carries no key or member
    strings: an idle stream holding it costs its few slots and no more. One granted
    fail-open carries them, so the heartbeat can add it once Redis answers again.
    """

    __slots__ = ("_owner", "key", "kind", "member", "owner_id", "released")

    def __init__(self, owner: StreamLeases, kind: str, owner_id: str, key: str | None,
                 member: str | None) -> None:
        self._owner = owner
        self.kind = kind
        self.owner_id = owner_id
        self.key = key
        self.member = member
        self.released = False

    @property
    def stored(self) -> bool:
        """True when the lease belongs in the store (counted across processes; one granted
        fail-open gets there with the first heartbeat Redis answers)."""
        return self.member is not None

    async def release(self) -> None:
        """Give the slot back now (safe to call twice, and from a cancelled task's finally)."""
        if self.released:
            return
        self.released = True
        await self._owner.forget(self)

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.release()


class StreamLeases:
    """Issues leases against the per-principal caps and keeps them alive by heartbeat."""

    def __init__(self, store: LeaseStore, settings: RateLimitSettings, *, prefix: str,
                 metrics: RateLimitMetrics | None = None) -> None:
        self.store = store
        self.settings = settings
        self.prefix = prefix
        self.metrics = metrics
        self.ttl_ms = max(1, int(settings.lease_ttl_s * 1000))
        self.errors = ErrorLog("leases")
        # Leases in the store, by member (the heartbeat refreshes them) ...
        self._held: dict[str, Lease] = {}
        # ... and every lease of this process, counted per (group, principal id).
        self._counts: dict[tuple[str, str], int] = {}
        self._total = 0
        self._tag = os.urandom(6).hex()
        self._seq = itertools.count()
        # The heartbeat's RESTORE in flight: a release waits for it, or a release on
        # another pooled connection could overtake it and the lease would come back.
        self._restoring: asyncio.Future[None] | None = None

    def limit_for(self, kind: str) -> int:
        """The cap for ``kind`` (0 = unlimited)."""
        if LEASE_GROUPS[kind] == "ws":
            return self.settings.max_ws_per_user
        return self.settings.max_streams

    def key_for(self, principal: Principal, group: str) -> str:
        """The sorted set holding ``principal``'s leases of ``group``."""
        return f"{self.prefix}lease:{group}:{principal.id}"

    async def acquire(self, principal: Principal, kind: str) -> Lease:
        """A lease for one more ``kind`` stream, or 429 ``details.kind = "concurrency"``."""
        if kind not in LEASE_GROUPS:
            raise ValueError(f"unknown lease kind {kind!r}")
        group = LEASE_GROUPS[kind]
        limit = self.limit_for(kind)
        stored = bool(limit) and principal.kind != "anonymous"
        key: str | None = None
        member: str | None = None
        if stored:
            key = self.key_for(principal, group)
            member = f"{self._tag}:{next(self._seq)}:{kind}"
            try:
                granted = await self.store.acquire(key, member, limit, self.ttl_ms)
            except BackendUnavailable as exc:
                self.errors.failure(exc)
                self._count("failed_" + self.settings.failure_mode, group)
                if self.settings.failure_mode == "closed":
                    raise DownstreamUnavailable(
                        "stream lease store unavailable",
                        details={"reason": "lease_store_unavailable"},
                        headers={"Retry-After": "1"}) from None
                # Keep key and member: the heartbeat adds the lease once Redis is back, or
                # the stream would never count against the cap.
            else:
                if not granted:
                    self._count("rejected", group)
                    raise RateLimitExceeded(
                        f"too many open {group} for this principal (limit {limit})",
                        retry_after=1,
                        details={"kind": "concurrency", "stream_kind": kind, "group": group,
                                 "limit": limit})
                self._count("allowed", group)
        lease = Lease(self, kind, principal.id, key, member)
        if member is not None:
            self._held[member] = lease
        count_key = (group, principal.id)
        self._counts[count_key] = self._counts.get(count_key, 0) + 1
        self._total += 1
        if self.metrics is not None:
            self.metrics.lease_held(kind, 1)
        return lease

    def _count(self, outcome: str, group: str) -> None:
        if self.metrics is not None:
            self.metrics.decision(f"concurrency_{group}", outcome)

    async def forget(self, lease: Lease) -> None:
        """Drop ``lease`` locally and from the store (called by Lease.release)."""
        if lease.member is not None and self._held.pop(lease.member, None) is None:
            return  # released already (shutdown's release_all)
        count_key = (LEASE_GROUPS[lease.kind], lease.owner_id)
        left = self._counts.get(count_key, 0) - 1
        if left > 0:
            self._counts[count_key] = left
        else:
            self._counts.pop(count_key, None)
        self._total -= 1
        if self.metrics is not None:
            self.metrics.lease_held(lease.kind, -1)
        if lease.key is not None and lease.member is not None:
            # Shielded: a release from a cancelled handler still reaches Redis.
            await asyncio.shield(self._release(lease.key, lease.member))

    async def _release(self, key: str, member: str) -> None:
        restoring = self._restoring
        if restoring is not None:
            await asyncio.wait([restoring])
        try:
            await self.store.release(key, member)
        except BackendUnavailable as exc:
            self.errors.failure(exc)  # it expires by itself after the TTL

    def held_here(self, principal: Principal, group: str) -> int:
        """Leases of ``group`` this process holds for ``principal``."""
        return self._counts.get((group, principal.id), 0)

    async def open_count(self, principal: Principal, group: str) -> int:
        """Open leases of ``group`` for ``principal`` across all processes (this one if the
        group is uncapped)."""
        kind = "ws" if group == "ws" else "sse"
        if not self.limit_for(kind) or principal.kind == "anonymous":
            return self.held_here(principal, group)
        return await self.store.count(self.key_for(principal, group))

    @property
    def held(self) -> int:
        """Leases held by this process."""
        return self._total

    async def refresh(self) -> None:
        """One heartbeat: extend every stored lease this process holds, in one round trip,
        then put back those the store lost and this process still holds."""
        items = [(lease.key, lease.member) for lease in self._held.values()
                 if lease.key is not None and lease.member is not None]
        if not items:
            return
        try:
            missing = await self.store.refresh(items, self.ttl_ms)
            # Released while the refresh was on its way: gone for good, not lost.
            lost = [(key, member) for key, member in missing if member in self._held]
            if lost:
                restore = asyncio.ensure_future(self.store.restore(lost, self.ttl_ms))
                self._restoring = restore
                try:
                    await restore
                finally:
                    self._restoring = None
                log.info("stream leases restored", count=len(lost))
        except BackendUnavailable as exc:
            self.errors.failure(exc)

    async def heartbeat(self) -> None:
        """Refresh forever, every third of the TTL (the sweep task)."""
        interval = self.settings.lease_ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception:  # a bug here must not stop the heartbeat for good
                log.exception("lease heartbeat failed")

    async def release_all(self) -> None:
        """Give back every stored lease still held (shutdown), together in one round trip."""
        leases = list(self._held.values())
        await asyncio.gather(*(lease.release() for lease in leases), return_exceptions=True)


LEASES = web.AppKey("leases", StreamLeases)


async def leases_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: concurrent-stream leases and their heartbeat task."""
    settings = app[SETTINGS]
    metrics = app.get(RATELIMIT_METRICS)
    redis = redis_of(app)
    store: LeaseStore
    if redis is None:
        store = MemoryLeaseStore()
    else:
        store = RedisLeaseStore(ScriptBatch(
            redis, timeout_s=settings.redis_timeout_s, what="leases",
            on_error=metrics.count_backend_errors if metrics else None))
        await store.batch.preload(ACQUIRE, REFRESH, RESTORE, RELEASE, COUNT)
    leases = StreamLeases(store, settings.ratelimit, prefix=settings.redis_prefix,
                          metrics=metrics)
    app[LEASES] = leases
    task = asyncio.create_task(leases.heartbeat(), name="luki-lease-heartbeat")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await leases.release_all()
    if isinstance(store, RedisLeaseStore):
        await store.batch.close()
