"""`luki-gateway dev`: reference upstreams bound and served, the whole stack end to end."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from luki_gateway.devstack.run import ReferenceStack, banner, bind_references
from luki_gateway.settings import Settings


def free_port() -> int:
    """A local TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port held by another listener for the duration of the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def test_bind_falls_back_to_a_free_port(make_settings: Callable[..., Settings],
                                        taken_port: int) -> None:
    """A taken reference port moves to a free one; external upstreams are left alone."""
    settings = make_settings(upstreams={"memory": f"http://127.0.0.1:{taken_port}",
                                        "agent": f"http://localhost:{free_port()}",
                                        "reports": "https://reports.example.com/api"})
    moved, references = bind_references(settings)
    try:
        names = {r.name for r in references}
        assert "reports" not in names
        assert {"memory", "agent"} <= names
        assert moved.upstreams["memory"] != f"http://127.0.0.1:{taken_port}"
        assert moved.upstreams["memory"].startswith("http://127.0.0.1:")
        assert moved.upstreams["reports"] == "https://reports.example.com/api"
        text = banner(moved, references, "sk_dev_x")
        assert "reports.example.com/api  (external)" in text
        assert "Bearer sk_dev_x" in text
    finally:
        for reference in references:
            reference.sock.close()


def _port_in_time_wait() -> int:
    """A port whose last server (a previous `dev`, which binds with SO_REUSEADDR as any
    server does) closed a connection first: it lingers in TIME_WAIT."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port: int = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first: its end of the port waits
    client.close()
    server.close()
    return port


def test_a_quick_restart_keeps_the_reference_port(make_settings: Callable[..., Settings]
                                                   ) -> None:
    """`dev` stopped and started again at once: a port only in TIME_WAIT is not taken."""
    port = _port_in_time_wait()
    settings = make_settings(upstreams={"agent": f"http://127.0.0.1:{port}"})
    moved, references = bind_references(settings)
    try:
        assert moved.upstreams["agent"] == f"http://127.0.0.1:{port}"
    finally:
        for reference in references:
            reference.sock.close()


async def test_reference_stack_serves_every_upstream(
        make_settings: Callable[..., Settings]) -> None:
    """The background stack answers /health for every reference upstream, then stops."""
    ports = {name: free_port() for name in ("agent", "memory", "cognitive", "engagement",
                                            "reports")}
    settings = make_settings(upstreams={n: f"http://127.0.0.1:{p}" for n, p in ports.items()})
    settings, references = bind_references(settings)
    stack = ReferenceStack(references)
    await asyncio.to_thread(stack.start)
    try:
        async with aiohttp.ClientSession() as session:
            for name, url in settings.upstreams.items():
                async with session.get(url + "/health") as resp:
                    assert resp.status == 200
                    assert (await resp.json())["service"] == name
    finally:
        await asyncio.to_thread(stack.stop)
    assert not stack._thread.is_alive()


async def test_dev_command_end_to_end(tmp_path: Path) -> None:
    """`python -m luki_gateway dev`: /health healthy, ELR through the proxy, clean Ctrl+C."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "TMPDIR": str(tmp_path), "LOG_LEVEL": "WARNING",
           "AGENT_URL": f"http://127.0.0.1:{free_port()}",
           "MEMORY_URL": f"http://127.0.0.1:{free_port()}",
           "COG_URL": f"http://127.0.0.1:{free_port()}",
           "ENG_URL": f"http://127.0.0.1:{free_port()}",
           "REP_URL": f"http://127.0.0.1:{free_port()}"}
    for name in ("LUKI_CONFIG", "REDIS_URL", "ENVIRONMENT", "API_KEYS_FILE"):
        env.pop(name, None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "luki_gateway", "dev", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    try:
        api_key = ""
        async with asyncio.timeout(20):
            while not api_key:
                line = (await proc.stderr.readline()).decode()
                assert line, "dev exited before printing its API key"
                if line.strip().startswith("API key"):
                    api_key = line.split()[-1]
        drain = asyncio.create_task(proc.stderr.read())
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {api_key}"}
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(20):
                while True:
                    try:
                        async with session.get(base + "/health") as resp:
                            if resp.status == 200:
                                health = await resp.json()
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.1)
            assert health["status"] == "healthy"
            async with session.post(base + "/v1/elr/ingest_text", headers=headers,
                                    json={"text": "hello from the test"}) as resp:
                assert resp.status == 201
            async with session.get(base + "/v1/elr/items", headers=headers) as resp:
                assert (await resp.json())["total"] == 1
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(15):
            assert await proc.wait() == 0
        await drain
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
