"""Daily output-token budget per principal (``[ratelimit] daily_output_tokens``, 0 = off).

The chat relay calls :meth:`TokenQuota.check` before a turn starts and
:meth:`TokenQuota.charge` with the turn's ``usage.output_tokens`` when it ends, abandoned turns
included (charge what was streamed). A turn already running may overshoot the budget by its
own length; the next turn is refused. Days are UTC days by the gateway's clock; counters live
under ``lgw:rl:tokens:<principal>:<YYYYMMDD>`` for two days.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from ..auth.principal import Principal
from ..errors import DownstreamUnavailable, RateLimitExceeded
from ..redis_client import redis_of
from ..settings import SETTINGS
from .batch import BackendUnavailable, ErrorLog, LuaScript, ScriptBatch
from .metrics import RATELIMIT_METRICS

KEY_TTL_S = 2 * 86400

USED = LuaScript("return tonumber(redis.call('GET', KEYS[1]) or '0')")
CHARGE = LuaScript("""
local used = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return used
""")


class QuotaStore(Protocol):
    """Daily counters: read one, add to one."""

    async def used(self, key: str) -> int:
        """Units recorded under ``key``."""

    async def add(self, key: str, amount: int) -> int:
        """Add ``amount``; returns the new total."""


class RedisQuotaStore:
    """Counters in Redis (INCRBY + EXPIRE in one script)."""

    def __init__(self, batch: ScriptBatch) -> None:
        self.batch = batch

    async def used(self, key: str) -> int:
        """Units recorded under ``key`` (0 when absent)."""
        return int(await self.batch.run(USED, [key], []))

    async def add(self, key: str, amount: int) -> int:
        """Add ``amount`` and keep the key for two days."""
        return int(await self.batch.run(CHARGE, [key], [amount, KEY_TTL_S]))


class MemoryQuotaStore:
    """The in-memory twin; keeps only the current and previous day's counters."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    async def used(self, key: str) -> int:
        """Units recorded under ``key``."""
        return self._counts.get(key, 0)

    async def add(self, key: str, amount: int) -> int:
        """Add ``amount``; drops counters of older days (keys end with the date)."""
        day = key.rsplit(":", 1)[-1]
        for old in [k for k in self._counts if k.rsplit(":", 1)[-1] < day]:
            del self._counts[old]
        self._counts[key] = self._counts.get(key, 0) + amount
        return self._counts[key]


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """A principal's budget today."""

    budget: int
    used: int
    reset_s: int

    @property
    def remaining(self) -> int:
        """Tokens left today (never negative)."""
        return max(0, self.budget - self.used)


class TokenQuota:
    """The daily output-token budget: checked before a turn, charged after it."""

    def __init__(self, store: QuotaStore, budget: int, *, prefix: str,
                 failure_mode: str = "open", clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.budget = budget
        self.prefix = prefix
        self.failure_mode = failure_mode
        self.clock = clock
        self.errors = ErrorLog("quotas")

    @property
    def enabled(self) -> bool:
        """False when no budget is configured (then check and charge do nothing)."""
        return self.budget > 0

    def _key_and_reset(self, principal: Principal) -> tuple[str, int]:
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(),
                                       dt.UTC)
        reset = max(1, int((midnight - now).total_seconds() + 0.999))
        return f"{self.prefix}rl:tokens:{principal.id}:{now:%Y%m%d}", reset

    async def usage(self, principal: Principal) -> TokenUsage | None:
        """Today's budget, use and reset (None when off); raises BackendUnavailable."""
        if not self.enabled:
            return None
        key, reset = self._key_and_reset(principal)
        return TokenUsage(self.budget, await self.store.used(key), reset)

    async def check(self, principal: Principal) -> None:
        """429 (``details.kind = "tokens"``) when today's budget is spent."""
        if not self.enabled:
            return
        try:
            usage = await self.usage(principal)
        except BackendUnavailable as exc:
            self.errors.failure(exc)
            if self.failure_mode == "closed":
                raise DownstreamUnavailable(
                    "token quota store unavailable", details={"reason": "quota_unavailable"},
                    headers={"Retry-After": "1"}) from None
            return
        if usage is not None and usage.used >= usage.budget:
            raise RateLimitExceeded(
                "daily output-token budget spent", retry_after=usage.reset_s,
                details={"kind": "tokens", "policy": "daily_output_tokens",
                         "limit": usage.budget, "used": usage.used,
                         "retry_after_s": usage.reset_s})

    async def charge(self, principal: Principal, output_tokens: int) -> None:
        """Record a finished (or abandoned) turn's output tokens; never raises on outages."""
        if not self.enabled or output_tokens <= 0:
            return
        key, _ = self._key_and_reset(principal)
        try:
            await self.store.add(key, int(output_tokens))
        except BackendUnavailable as exc:
            self.errors.failure(exc)  # the tokens go uncounted; the turn already happened


TOKEN_QUOTA = web.AppKey("token_quota", TokenQuota)


async def quotas_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the daily token quota (memory or Redis counters)."""
    settings = app[SETTINGS]
    redis = redis_of(app)
    store: QuotaStore
    batch: ScriptBatch | None = None
    if redis is None:
        store = MemoryQuotaStore()
    else:
        metrics = app.get(RATELIMIT_METRICS)
        batch = ScriptBatch(redis, timeout_s=settings.redis_timeout_s, what="quotas",
                            on_error=metrics.count_backend_errors if metrics else None)
        store = RedisQuotaStore(batch)
    app[TOKEN_QUOTA] = TokenQuota(store, settings.ratelimit.daily_output_tokens,
                                  prefix=settings.redis_prefix,
                                  failure_mode=settings.ratelimit.failure_mode)
    yield
    if batch is not None:
        await batch.close()
