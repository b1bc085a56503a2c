"""The API key store in use: Redis when configured, else the file (or in-memory) store."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import structlog
from aiohttp import web

from ..redis_client import make_redis, redis_of
from ..settings import SETTINGS, Settings
from .key_file_store import FileKeyStore
from .key_record import KeyStore, StoreUnavailable
from .key_redis_store import RedisKeyStore

log = structlog.get_logger("luki.auth")

KEY_STORE = web.AppKey("key_store", KeyStore)
# How long shutdown waits for the last-used flusher to stop.
CLOSE_WAIT_S = 2.0
# How often each process looks for revocations made elsewhere (streams opened with a
# revoked key end this long after the revocation, at most, plus a round trip).
REVOCATION_POLL_S = 0.5


def open_store(settings: Settings, redis: aioredis.Redis | None = None) -> KeyStore:
    """The Redis store when Redis is configured, else the file (or in-memory) store.

    ``redis`` is the app's shared client; without one, a configured REDIS_URL gets a
    client of its own (the CLI), closed with the store.
    """
    cache_s = settings.auth.key_cache_s
    if redis is not None:
        return RedisKeyStore(redis, prefix=settings.redis_prefix, cache_s=cache_s)
    if settings.redis_url:
        return RedisKeyStore(make_redis(settings), prefix=settings.redis_prefix,
                             cache_s=cache_s, owns_client=True)
    return FileKeyStore(settings.auth.api_keys_file or None)


async def key_store_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: API key store (file or Redis) and its periodic last-used flush."""
    settings = app[SETTINGS]
    store = open_store(settings, redis_of(app))
    app[KEY_STORE] = store
    if settings.auth.api_keys_file and isinstance(store, RedisKeyStore):
        # Keys created into that file would be refused as unknown: say why at start-up.
        log.warning("api_keys_file is ignored: with Redis configured, API keys live in "
                    "Redis (create them with `luki-gateway keys create --redis-url ...`)",
                    api_keys_file=settings.auth.api_keys_file)

    async def flush_periodically() -> None:
        while True:
            await asyncio.sleep(settings.auth.last_used_interval_s)
            with contextlib.suppress(Exception):  # a Redis blip only delays last-used
                await store.flush_last_used()

    async def poll_revocations() -> None:
        while True:
            await asyncio.sleep(REVOCATION_POLL_S)
            try:
                await store.poll_revocations()
            except StoreUnavailable:
                pass  # Redis away: requests say so; the feed is read again when it is back
            except Exception:  # a bug here must not stop the polling for good
                log.exception("revocation poll failed")

    tasks = (asyncio.create_task(flush_periodically(), name="luki-key-last-used"),
             asyncio.create_task(poll_revocations(), name="luki-key-revocations"))
    yield
    for task in tasks:
        task.cancel()
    # Bounded: redis-py can swallow a cancel mid-call (then a loop would run on).
    await asyncio.wait(tasks, timeout=CLOSE_WAIT_S)
    await store.close()
