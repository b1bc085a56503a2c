"""`serve --workers 2` as a real subprocess: both workers answer, SIGTERM drains gracefully."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import luki_gateway

from .conftest import bearer
from .redis_server import free_port

PROBE = Path(__file__).with_name("serve_probe.py")
# The code under test, also in the subprocess: its scrubbed environment would otherwise
# import whatever checkout the venv's editable install points at.
SOURCE_ROOT = str(Path(luki_gateway.__file__).resolve().parent.parent)
GRACE_S = 4.0
# README: every process exits within SHUTDOWN_GRACE_S plus this.
EXIT_MARGIN_S = 2.0


class Served:
    """A running `serve` subprocess and where it listens."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def log_text(self) -> str:
        """Everything the supervisor and workers logged so far."""
        return self.log.read_text(errors="replace")


@pytest.fixture
def serve_two(tmp_path: Path) -> Iterator[Served]:
    """Start `serve --workers 2` (with a /test/slow route) on a free port; kill it at the end."""
    yield from _serve(tmp_path, workers=2)


@pytest.fixture
def serve_one(tmp_path: Path) -> Iterator[Served]:
    """Start plain `serve` (one process, no supervisor) on a free port; kill it at the end."""
    yield from _serve(tmp_path, workers=1)


@pytest.fixture
def start_serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start the probe CLI's `serve` with extra environment; kill what is left at the end."""
    started: list[Served] = []

    def start(workers: int, **env: str) -> Served:
        served = _start(tmp_path, workers, env)
        started.append(served)
        return served

    yield start
    for served in started:
        _stop(served)


def _serve(tmp_path: Path, workers: int) -> Iterator[Served]:
    """Run the probe CLI's `serve` until the test ends."""
    served = _start(tmp_path, workers, {})
    yield served
    _stop(served)


def _start(tmp_path: Path, workers: int, extra_env: dict[str, str]) -> Served:
    port = free_port()
    log = tmp_path / "serve.log"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/"),
           "PYTHONPATH": SOURCE_ROOT, "SHUTDOWN_GRACE_S": str(GRACE_S), "LOG_FORMAT": "json",
           **extra_env}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(PROBE), "serve", "--workers", str(workers),
                                 "--port", str(port)], env=env, stdout=out, stderr=out)
    return Served(proc, port, log)


def _stop(served: Served) -> None:
    if served.proc.poll() is None:
        served.proc.kill()
        served.proc.wait()


def parent_of(pid: int) -> int:
    """The parent pid of ``pid`` (from /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


async def worker_pids(served: Served, want: int, within_s: float = 30) -> set[int]:
    """Open fresh connections until ``want`` different workers answered /healthz."""
    seen: set[int] = set()
    deadline = time.monotonic() + within_s
    connector = aiohttp.TCPConnector(force_close=True)  # new connection: kernel picks a worker
    async with aiohttp.ClientSession(connector=connector) as session:
        while len(seen) < want:
            assert time.monotonic() < deadline, f"only {seen} answered; log:\n{served.log_text()}"
            assert served.proc.poll() is None, served.log_text()
            try:
                async with session.get(f"{served.url}/healthz") as resp:
                    assert resp.status == 200
                    seen.add(int(resp.headers["X-LUKi-Worker"]))
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)  # workers still starting: nothing to wait on but time
    return seen


async def test_two_workers_answer_and_sigterm_drains(serve_two: Served) -> None:
    """Both pids answer; on SIGTERM the in-flight request finishes and all exit within grace."""
    pids = await worker_pids(serve_two, want=2)
    assert len(pids) == 2 and serve_two.proc.pid not in pids
    assert {parent_of(pid) for pid in pids} == {serve_two.proc.pid}

    async with aiohttp.ClientSession() as session, \
            session.get(f"{serve_two.url}/test/slow?ms=1500") as resp:
        assert await resp.content.readline() == b"started\n"  # in flight now
        stopped_at = time.monotonic()
        serve_two.proc.send_signal(signal.SIGTERM)
        assert await resp.content.read() == b"finished\n"
    code = await asyncio.to_thread(serve_two.proc.wait, GRACE_S * 2 + 5)
    took = time.monotonic() - stopped_at
    assert code == 0, serve_two.log_text()
    assert took < GRACE_S + 2, took
    assert not any(_running(pid) for pid in pids)
    log = serve_two.log_text()
    assert log.count('"worker listening"') == 2
    assert log.count('"worker stopped"') == 2
    assert "Traceback" not in log


async def test_single_process_serve_drains_on_sigterm(serve_one: Served) -> None:
    """Without workers the serving process itself answers and drains on SIGTERM."""
    assert await worker_pids(serve_one, want=1) == {serve_one.proc.pid}
    async with aiohttp.ClientSession() as session, \
            session.get(f"{serve_one.url}/test/slow?ms=800") as resp:
        assert await resp.content.readline() == b"started\n"
        serve_one.proc.send_signal(signal.SIGTERM)
        assert await resp.content.read() == b"finished\n"
    assert await asyncio.to_thread(serve_one.proc.wait, GRACE_S * 2 + 5) == 0
    assert "Traceback" not in serve_one.log_text()


async def test_workers_follow_a_vanished_supervisor(serve_two: Served) -> None:
    """SIGKILL on the supervisor: the workers notice and shut down by themselves."""
    pids = await worker_pids(serve_two, want=2)
    serve_two.proc.kill()
    serve_two.proc.wait()
    deadline = time.monotonic() + GRACE_S + 10
    while any(_running(pid) for pid in pids):
        assert time.monotonic() < deadline, serve_two.log_text()
        await asyncio.sleep(0.1)  # orphaned processes: no handle to wait on
    assert serve_two.log_text().count("supervisor gone") == 2


@pytest.mark.parametrize("workers", [1, 2])
async def test_sync_chat_still_waiting_when_the_grace_ends_gets_503(
        start_serve: Callable[..., Served], upstream: Callable[..., Any], workers: int) -> None:
    """SIGTERM while a sync chat waits on a silent agent: when the grace is over the caller
    gets the JSON 503 (not a cut connection after twice the grace), and the process exits
    within grace + EXIT_MARGIN_S."""
    grace_s = 2.0
    arrived = asyncio.Event()

    async def silent_agent(_: web.Request) -> web.Response:
        arrived.set()
        await asyncio.sleep(60)
        return web.json_response({})

    agent = web.Application()
    agent.router.add_post("/v1/chat", silent_agent)
    served = start_serve(workers, AGENT_URL=await upstream(agent),
                         SHUTDOWN_GRACE_S=str(grace_s))
    await worker_pids(served, want=workers)
    async with aiohttp.ClientSession() as session:
        chat = asyncio.create_task(session.post(f"{served.url}/v1/chat",
                                                json={"message": "hello"}, headers=bearer()))
        await asyncio.wait_for(arrived.wait(), timeout=10)
        stopped_at = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        async with await chat as resp:
            answered = time.monotonic() - stopped_at
            assert resp.status == 503, served.log_text()
            body = await resp.json()
    assert body["error"]["code"] == "DOWNSTREAM_UNAVAILABLE"
    assert "shutting down" in body["error"]["message"]
    assert grace_s - 0.1 < answered < grace_s + 1, answered
    assert await asyncio.to_thread(served.proc.wait, 30) == 0
    took = time.monotonic() - stopped_at
    assert took < grace_s + EXIT_MARGIN_S, took
    assert "Traceback" not in served.log_text()


async def test_request_outliving_the_grace_is_cut_and_the_process_exits(
        start_serve: Callable[..., Served]) -> None:
    """A handler that ignores the shutdown is cancelled soon after the grace (aiohttp alone
    waited the grace twice), so the process still exits within grace + EXIT_MARGIN_S."""
    grace_s = 2.0
    served = start_serve(1, SHUTDOWN_GRACE_S=str(grace_s))
    await worker_pids(served, want=1)
    async with aiohttp.ClientSession() as session, \
            session.get(f"{served.url}/test/slow?ms=60000") as resp:
        assert await resp.content.readline() == b"started\n"
        stopped_at = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.content.read()
        cut = time.monotonic() - stopped_at
    assert grace_s - 0.1 < cut < grace_s + 1, cut
    assert await asyncio.to_thread(served.proc.wait, 30) == 0
    took = time.monotonic() - stopped_at
    assert took < grace_s + EXIT_MARGIN_S, took
    assert "Traceback" not in served.log_text()


@pytest.mark.parametrize("workers", [1, 2])
async def test_ready_answers_503_while_the_listener_drains(
        start_serve: Callable[..., Served], workers: int) -> None:
    """SIGTERM: the listener stays open for SHUTDOWN_DRAIN_S, /ready answers 503 "draining"
    there (Connection: close) while other requests are still served; then connections are
    refused. aiohttp alone closed the listener first: /ready went from 200 to refused."""
    drain_s = 1.0
    served = start_serve(workers, SHUTDOWN_DRAIN_S=str(drain_s))
    await worker_pids(served, want=workers)
    readiness: list[tuple[int, str, str | None]] = []
    # A keep-alive pool, as a load balancer's: the server itself must say Connection: close
    # (a client asking for it would get it back whatever the server does).
    connector = aiohttp.TCPConnector()
    async with aiohttp.ClientSession(connector=connector) as session:
        stopped_at = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        while True:
            try:
                async with session.get(f"{served.url}/ready") as resp:
                    body = await resp.json()
                    readiness.append((resp.status, body["checks"]["startup"],
                                      resp.headers.get("Connection")))
                if readiness[-1][0] == 503 and len(readiness) % 5 == 0:
                    async with session.get(f"{served.url}/healthz") as resp:
                        assert resp.status == 200  # draining, still serving
            except aiohttp.ClientConnectionError:
                break
            assert time.monotonic() - stopped_at < drain_s + 2, readiness
            await asyncio.sleep(0.02)  # a load balancer's polling interval, shortened
        refused_after = time.monotonic() - stopped_at
    assert await asyncio.to_thread(served.proc.wait, 30) == 0
    # Polls that raced the signal's delivery may still be ready; from the first 503 on, all.
    first = next((i for i, (status, _, _) in enumerate(readiness) if status == 503), None)
    assert first is not None, readiness
    draining = readiness[first:]
    assert len(draining) >= 10, readiness
    assert set(draining) == {(503, "draining", "close")}, readiness
    assert drain_s - 0.1 < refused_after < drain_s + 1, refused_after
    assert "Traceback" not in served.log_text()


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize(("workers", "reuse_port"), [("1", False), ("2", False),
                                                     ("2", True)])
def test_port_taken_stops_with_one_line_per_process(workers: str, reuse_port: bool) -> None:
    """A taken port: exit 1 with a clear line, no traceback, no restart loop. Also when
    the listener there has SO_REUSEPORT (another gateway's workers), which N workers'
    own SO_REUSEPORT would otherwise share: two deployments answering on one port."""
    message = "luki-gateway: cannot start: "
    with socket.socket() as taken:
        if reuse_port:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "luki_gateway", "serve", "--workers", workers,
             "--port", str(port)],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LOG_FORMAT": "console"},
            capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr
    assert message in proc.stderr
    assert "address already in use" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "worker listening" not in proc.stderr


async def test_startup_objects_are_frozen_out_of_the_collector() -> None:
    """After start-up the worker freezes what exists, so full collections skip it."""
    import gc

    from aiohttp import web

    from luki_gateway.serving import _freeze_startup_objects

    try:
        await _freeze_startup_objects(web.Application())
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
