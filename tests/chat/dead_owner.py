"""A turn whose process died: written to Redis by a registry that then stops, never ended."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from luki_gateway.hub.turns import TurnRegistry
from luki_gateway.settings import ChatSettings


@contextlib.asynccontextmanager
async def turn_of_a_dead_process(redis_url: str, turn_id: str = "t_dead",
                                 tokens: int = 3) -> AsyncIterator[None]:
    """``turn_id`` of principal ``jwt:alice`` with ``tokens`` tokens stored (seq 1..tokens),
    its process gone without a heartbeat or an end."""
    redis = aioredis.Redis.from_url(redis_url)
    owner = TurnRegistry(ChatSettings(), redis, "lgw:")
    try:
        dead = owner.create(turn_id, "jwt:alice")
        for i in range(tokens):
            dead.publish("token", b'{"text": "%d"}' % i, str(i))
        await owner.flush()
        yield
    finally:
        await redis.aclose()
