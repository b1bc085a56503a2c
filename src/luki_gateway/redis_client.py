"""The shared Redis client (``redis.asyncio``), opened once per app when REDIS_URL is set."""

from __future__ import annotations

from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import structlog
from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from .settings import SETTINGS, Settings

REDIS = web.AppKey("redis", aioredis.Redis)

log = structlog.get_logger("luki.redis")


def make_redis(settings: Settings) -> aioredis.Redis:
    """A client whose every call is bounded by the configured timeout (no 5-second hangs).

    A call that fails on a broken connection (Redis restarted since it was pooled) is sent
    once more on a fresh one, so a restart costs no request an error; a timeout is not
    retried (Redis is slow or gone: answer now).
    """
    return aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=0,
        retry_on_timeout=False,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        max_connections=512,
        decode_responses=False,
    )


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: open Redis when configured; without REDIS_URL the in-memory twins serve."""
    settings = app[SETTINGS]
    if not settings.redis_url:
        yield
        return
    client = make_redis(settings)
    app[REDIS] = client
    try:
        await client.ping()
    except Exception as exc:
        log.warning("redis unreachable at start-up", error=type(exc).__name__)
    yield
    await client.aclose()


def redis_of(app: web.Application) -> aioredis.Redis | None:
    """The app's Redis client, or None in the embedded (in-memory) mode."""
    return app.get(REDIS)
