"""Resume across the worker processes of `serve --workers 2` sharing one Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from luki_gateway.devstack.agent import reply_tokens
from tests.chat.sse_client import read_events
from tests.conftest import bearer
from tests.redis_server import free_port


@pytest.fixture
def serve_env(tmp_path: Path, redis_url: str) -> Iterator[Callable[[str], str]]:
    """Start `luki-gateway serve --workers 2` on Redis for a given agent URL; stop it after."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(agent_url: str) -> str:
        port = free_port()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
               "REDIS_URL": redis_url, "AGENT_URL": agent_url, "LOG_LEVEL": "WARNING",
               "RATE_LIMIT_ENABLED": "false"}
        with (tmp_path / "serve.log").open("wb") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "luki_gateway", "serve", "--workers", "2", "--port",
                 str(port)], env=env, stdout=out, stderr=out))
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


async def _session_on_worker(url: str, not_pid: int | None, within_s: float = 30.0
                             ) -> tuple[aiohttp.ClientSession, int]:
    """A one-connection session and the worker pid that connection landed on."""
    deadline = time.monotonic() + within_s
    while True:
        assert time.monotonic() < deadline, "no (other) worker answered"
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        try:
            async with session.get(f"{url}/healthz") as resp:
                pid = int(resp.headers["X-LUKi-Worker"])
        except aiohttp.ClientConnectionError:
            await session.close()
            await asyncio.sleep(0.1)  # workers still starting: nothing to wait on but time
            continue
        if pid != not_pid:
            return session, pid
        await session.close()


async def test_resume_on_the_other_worker(serve_env: Callable[[str], str],
                                          start_agent: Callable[..., Any]) -> None:
    """Drop a turn on one worker, resume it on the other: every token once, one done."""
    agent = await start_agent(tokens=40, tokens_per_s=40.0)
    url = serve_env(agent.url)
    first, first_pid = await _session_on_worker(url, None)
    async with first:
        resp = await first.post(f"{url}/v1/chat/stream", json={"message": "across"},
                                headers=bearer())
        turn_id = resp.headers["X-LUKi-Turn-Id"]
        head = await read_events(resp, stop_after=5)
        resp.close()
    second, second_pid = await _session_on_worker(url, first_pid)
    assert second_pid != first_pid
    async with second:
        resp = await second.get(f"{url}/v1/chat/stream", params={"turn_id": turn_id},
                                headers={**bearer(), "Last-Event-ID": f"{turn_id}:5"})
        assert resp.status == 200
        rest = await read_events(resp)
    events = head + rest
    assert [e.id for e in events] == [f"{turn_id}:{i}" for i in range(1, 42)]
    assert [e.data["text"] for e in events[:-1]] == reply_tokens("across", 40)
    assert events[-1].event == "done" and events[-1].data["finish_reason"] == "stop"
