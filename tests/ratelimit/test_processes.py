"""Two real gateway processes on one Redis: the limit holds across processes."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from ..conftest import bearer
from ..redis_server import free_port


async def wait_healthy(session: aiohttp.ClientSession, url: str,
                       proc: asyncio.subprocess.Process) -> None:
    """Poll /healthz until the process answers (a process start has no event to wait on)."""
    async with asyncio.timeout(30):
        while True:
            assert proc.returncode is None, "gateway process exited during start-up"
            try:
                async with session.get(f"{url}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


async def backend_errors(session: aiohttp.ClientSession, url: str) -> str:
    """The gateway's luki_ratelimit_backend_errors_total line (for failure messages)."""
    async with session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return next((line for line in text.splitlines()
                 if line.startswith("luki_ratelimit_backend_errors_total")), "absent")


@pytest.fixture
async def two_gateways(redis_url: str) -> AsyncIterator[list[str]]:
    """Two `luki-gateway serve` processes on two ports sharing the private Redis."""
    env = {**os.environ, "REDIS_URL": redis_url, "RATE_LIMIT_ENABLED": "true",
           "RATE_LIMIT_PER_MIN": "100", "RATE_LIMIT_PER_HOUR": "1000",
           "LOG_LEVEL": "WARNING", "ACCESS_LOG": "false", "ENVIRONMENT": "development"}
    for name in ("LUKI_CONFIG", "JWT_SECRET", "JWT_PUBLIC_KEY_PATH", "JWT_JWKS_URL"):
        env.pop(name, None)
    procs: list[asyncio.subprocess.Process] = []
    urls: list[str] = []
    try:
        for _ in range(2):
            port = free_port()
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "luki_gateway", "serve", "--host", "127.0.0.1",
                "--port", str(port), env=env, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL))
            urls.append(f"http://127.0.0.1:{port}")
        async with aiohttp.ClientSession() as session:
            for url, proc in zip(urls, procs, strict=True):
                await wait_healthy(session, url, proc)
        yield urls
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in procs:
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_300_requests_over_two_processes_admit_exactly_100(
        two_gateways: list[str]) -> None:
    """300 concurrent requests split between two processes against 100/min: exactly 100 pass."""
    headers = bearer("alice")
    async with aiohttp.ClientSession() as session:
        for url in two_gateways:  # warm both (JWT, Redis connection): deployments are warm
            async with session.get(f"{url}/v1/usage", headers=headers) as resp:
                assert resp.status == 200

        async def one(i: int) -> tuple[int, str]:
            url = two_gateways[i % 2]
            async with session.post(f"{url}/v1/auth/ticket", headers=headers) as resp:
                await resp.read()
                return resp.status, url

        results = await asyncio.gather(*(one(i) for i in range(300)))
        errors = [await backend_errors(session, url) for url in two_gateways]
    per_url = {url: sorted(s for s, u in results if u == url) for url in two_gateways}
    statuses = [status for status, _ in results]
    assert statuses.count(200) == 100, (per_url, errors)
    assert statuses.count(429) == 200, per_url  # a split budget would admit 200
