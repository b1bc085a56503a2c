"""Running the app: one worker, or N workers sharing the port with SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from types import FrameType

import structlog
from aiohttp import web

from .app import create_app
from .log import configure_logging
from .settings import Settings

log = structlog.get_logger("luki.serve")


def raise_fd_limit() -> None:
    """Streams hold a socket each: lift the soft open-files limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def install_uvloop() -> bool:
    """Use uvloop when it is installed (it is on Linux); plain asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def run_worker(settings: Settings, *, reuse_port: bool,
               before_start: Callable[[web.Application], Awaitable[None]] | None = None) -> None:
    """Serve one app on this process's own event loop until SIGTERM/SIGINT."""
    configure_logging(settings)
    raise_fd_limit()
    fast_loop = install_uvloop()
    app = create_app(settings)
    if before_start is not None:
        app.on_startup.insert(0, before_start)

    async def announce(_: web.Application) -> None:
        log.info("worker listening", host=settings.host, port=settings.port, pid=os.getpid(),
                 uvloop=fast_loop, environment=settings.environment)

    app.on_startup.append(announce)
    web.run_app(app, host=settings.host, port=settings.port, reuse_port=reuse_port or None,
                shutdown_timeout=settings.shutdown_grace_s, access_log=None, print=None,
                handle_signals=True)


def _worker_main(settings: Settings) -> None:
    run_worker(settings, reuse_port=True)


def serve(settings: Settings) -> int:
    """Run ``settings.workers`` processes; forward SIGTERM/SIGINT; restart a crashed worker."""
    if settings.workers == 1:
        run_worker(settings, reuse_port=False)
        return 0
    configure_logging(settings)
    ctx = multiprocessing.get_context("spawn")
    procs: list[multiprocessing.process.BaseProcess] = []
    stopping = False

    def start_one() -> multiprocessing.process.BaseProcess:
        proc = ctx.Process(target=_worker_main, args=(settings,), name="luki-gateway-worker")
        proc.start()
        return proc

    def on_signal(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    procs.extend(start_one() for _ in range(settings.workers))
    log.info("supervisor started", workers=settings.workers, pid=os.getpid(),
             host=settings.host, port=settings.port)
    last_restart = 0.0
    while True:
        alive = [p for p in procs if p.is_alive()]
        if stopping:
            deadline = time.monotonic() + settings.shutdown_grace_s + 5
            for proc in procs:
                proc.join(max(0.0, deadline - time.monotonic()))
                if proc.is_alive():
                    proc.kill()
            break
        for i, proc in enumerate(procs):
            if not proc.is_alive() and time.monotonic() - last_restart > 1.0:
                log.warning("worker exited; restarting", pid=proc.pid, exitcode=proc.exitcode)
                procs[i] = start_one()
                last_restart = time.monotonic()
        if not alive and not procs:
            break
        time.sleep(0.2)
    log.info("supervisor stopped")
    sys.stdout.flush()
    return 0
