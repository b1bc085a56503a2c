"""The private Redis fixture works and its fault helpers do what they say."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from .redis_server import RedisServer


async def test_private_redis_round_trip(redis_url: str) -> None:
    """A value written through redis.asyncio reads back from the private server."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set("lgw:test:fixture", b"1", ex=10)
        assert await client.get("lgw:test:fixture") == b"1"
    finally:
        await client.aclose()


async def test_pause_makes_calls_time_out_and_resume_recovers(
        redis_server: RedisServer, redis_url: str) -> None:
    """SIGSTOP freezes the server (timeouts), SIGCONT brings it back."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=0.2)
    try:
        assert await client.ping()
        redis_server.pause()
        with pytest.raises((aioredis.TimeoutError, asyncio.TimeoutError)):
            await client.ping()
        redis_server.resume()
        await client.aclose()
        client = aioredis.Redis.from_url(redis_url, socket_timeout=0.5)
        assert await client.ping()
    finally:
        await client.aclose()


async def test_kill_then_restart(redis_server: RedisServer, redis_url: str) -> None:
    """A killed server refuses connections; restarted, it answers on the same URL."""
    redis_server.kill()
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=0.2)
    try:
        with pytest.raises(aioredis.ConnectionError):
            await client.ping()
        redis_server.start()
        assert await client.ping()
    finally:
        await client.aclose()


def test_missing_redis_server_fails_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a redis-server binary the fixture fails (never skips) saying how to install it."""
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeError, match="apt-get install redis-server"):
        RedisServer()
