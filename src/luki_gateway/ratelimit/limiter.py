"""The rate limiter of one app: memory backend (embedded default) or Redis (Lua) backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from ..metrics import REGISTRY
from ..redis_client import redis_of
from ..settings import SETTINGS
from .batch import ScriptBatch
from .decision import Limiter
from .memory import MemoryLimiter
from .metrics import RATELIMIT_METRICS, RateLimitMetrics
from .policies import RatePolicies
from .redis_backend import SLIDING_LOG, RedisLimiter

log = structlog.get_logger("luki.ratelimit")

LIMITER = web.AppKey("limiter", Limiter)
RATE_POLICIES = web.AppKey("rate_policies", RatePolicies)


async def limiter_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the rate limiter (memory or Redis backend), its policies and metrics."""
    settings = app[SETTINGS]
    metrics = RateLimitMetrics.create(app[REGISTRY])
    app[RATELIMIT_METRICS] = metrics
    app[RATE_POLICIES] = RatePolicies(settings.ratelimit, settings.trusted_proxies)
    redis = redis_of(app)
    limiter: Limiter
    if redis is None:
        if settings.workers > 1 and settings.ratelimit.enabled:
            log.warning("rate limits are per process without REDIS_URL",
                        workers=settings.workers)
        limiter = MemoryLimiter()
    else:
        batch = ScriptBatch(redis, timeout_s=settings.redis_timeout_s, what="limiter",
                            on_error=metrics.count_backend_errors)
        limiter = RedisLimiter(redis, batch, settings.redis_prefix)
        await batch.preload(SLIDING_LOG)
    app[LIMITER] = limiter
    yield
    await limiter.close()
