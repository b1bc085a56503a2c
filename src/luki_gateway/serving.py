"""Running the app: one worker, or N workers sharing the port with SO_REUSEPORT.

With ``workers > 1`` a supervisor process starts N worker processes (``spawn``), each
binding the port itself with SO_REUSEPORT and running its own app. Workers live in their
own process group, so a terminal's Ctrl+C reaches only the supervisor, which turns SIGINT
and SIGTERM into one SIGTERM per worker (a second signal would end a worker's drain delay
early). A worker whose supervisor disappears shuts itself down.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
import resource
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import FrameType
from typing import Any

import structlog
from aiohttp import web

from .app import create_app
from .lifecycle import LIFECYCLE
from .log import configure_logging
from .settings import SETTINGS, Settings, SettingsError, load_settings, settings_data

log = structlog.get_logger("luki.serve")

# A worker that dies this soon after its start failed to start (port taken, bad config):
# restarting it would only loop, so the supervisor stops instead.
STARTUP_FAILURE_WINDOW_S = 5.0
# How long after the grace a worker may take to exit: the answers and cancels at the
# grace's end (lifecycle.ANSWER_WAIT_S), then closing connections and resources. The
# supervisor kills a worker still alive after that.
EXIT_MARGIN_S = 2.0


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


async def _orphan_watch(_: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: SIGTERM ourselves when the supervisor is gone (no stray workers)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        yield
        return
    loop = asyncio.get_running_loop()

    def parent_gone() -> None:
        loop.remove_reader(parent.sentinel)
        log.warning("supervisor gone; shutting down", parent_pid=parent.pid)
        os.kill(os.getpid(), signal.SIGTERM)

    # The sentinel becomes readable when the parent process exits.
    loop.add_reader(parent.sentinel, parent_gone)
    yield
    loop.remove_reader(parent.sentinel)


async def _drain_on_signal(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: SIGTERM/SIGINT make the app draining at once (/ready answers 503) and
    stop serving ``shutdown_drain_s`` later; a second signal stops it at once.

    aiohttp's own signal handling closes the listener and the idle keep-alive connections
    first and runs the on_shutdown hooks (which marked the app draining) only then, so no
    client ever saw /ready answer 503: it went from 200 to connection refused. Meanwhile a
    load balancer polling /ready has the time to take this process out.
    """
    loop = asyncio.get_running_loop()
    settings = app[SETTINGS]
    lifecycle = app[LIFECYCLE]
    delay = min(settings.shutdown_drain_s, settings.shutdown_grace_s)  # within the grace
    stop: asyncio.TimerHandle | None = None

    def stop_serving() -> None:
        nonlocal stop
        stop = None
        raise web.GracefulExit()  # as aiohttp's handler does: run_app cleans up from here

    def on_signal(signum: signal.Signals) -> None:
        nonlocal stop
        if not lifecycle.draining:
            lifecycle.begin_drain(settings.shutdown_grace_s)
            log.info("draining", signal=signum.name, pid=os.getpid(), listener_open_s=delay)
            stop = loop.call_later(delay, stop_serving)
        elif stop is not None:
            stop.cancel()
            stop_serving()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    yield
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)


async def _freeze_startup_objects(_: web.Application) -> None:
    """Once started: move every object made so far (modules, settings, routes, registry)
    out of the garbage collector's reach, so a full collection under load walks only what
    requests and streams created, and pauses every stream for less."""
    gc.collect()
    gc.freeze()


def run_worker(settings: Settings, *, reuse_port: bool,
               before_start: Callable[[web.Application], Awaitable[None]] | None = None,
               supervised: bool = False) -> None:
    """Serve one app on this process's own event loop until SIGTERM/SIGINT."""
    configure_logging(settings)
    raise_fd_limit()
    fast_loop = install_uvloop()
    app = create_app(settings)
    app.cleanup_ctx.append(_drain_on_signal)
    if supervised:
        app.cleanup_ctx.append(_orphan_watch)
    if before_start is not None:
        app.on_startup.insert(0, before_start)
    app.on_startup.append(_freeze_startup_objects)

    def announce(_: str) -> None:
        # run_app "prints" once the socket is bound: the one moment we are really listening.
        log.info("worker listening", host=settings.host, port=settings.port, pid=os.getpid(),
                 uvloop=fast_loop, environment=settings.environment)

    web.run_app(app, host=settings.host, port=settings.port, reuse_port=reuse_port or None,
                shutdown_timeout=settings.shutdown_grace_s, access_log=None, print=announce,
                handle_signals=False)  # _drain_on_signal does
    log.info("worker stopped", pid=os.getpid())


def _worker_main(data: dict[str, Any]) -> None:
    """Entry point of a spawned worker: settings arrive as plain data (they are not picklable)."""
    os.setpgrp()  # Ctrl+C on the terminal goes to the supervisor only; it forwards SIGTERM
    settings = load_settings(environ={}, overrides=data)
    try:
        run_worker(settings, reuse_port=True, supervised=True)
    except OSError as exc:
        # e.g. the port is taken: one line, not multiprocessing's traceback
        log.error("worker cannot start", error=str(exc), pid=os.getpid())
        raise SystemExit(1) from None


class Supervisor:
    """Starts N workers, forwards shutdown signals, restarts a worker that crashes later on."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.started_at: dict[int, float] = {}
        self.stopping = False
        self.data = settings_data(settings)

    def start_one(self) -> multiprocessing.process.BaseProcess:
        """Spawn one worker process."""
        proc = self.ctx.Process(target=_worker_main, args=(self.data,),
                                name="luki-gateway-worker")
        proc.start()
        self.started_at[id(proc)] = time.monotonic()
        return proc

    def on_signal(self, signum: int, _: FrameType | None) -> None:
        """SIGTERM/SIGINT: ask every worker to drain (once)."""
        if self.stopping:
            return
        self.stopping = True
        log.info("supervisor stopping", signal=signal.Signals(signum).name)
        self.signal_all(signal.SIGTERM)

    def signal_all(self, signum: int) -> None:
        """Send ``signum`` to every live worker."""
        for proc in self.procs:
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)

    def wait_all(self) -> None:
        """Wait for the workers' graceful exit; kill what outlives the grace."""
        deadline = time.monotonic() + self.settings.shutdown_grace_s + EXIT_MARGIN_S
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("worker outlived the grace; killing", pid=proc.pid)
                proc.kill()
                proc.join()

    def run(self) -> int:
        """Supervise until a signal (exit 0) or a worker failing at start-up (exit 1)."""
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        self.procs.extend(self.start_one() for _ in range(self.settings.workers))
        log.info("supervisor started", workers=self.settings.workers, pid=os.getpid(),
                 host=self.settings.host, port=self.settings.port)
        while not self.stopping:
            for i, proc in enumerate(self.procs):
                if proc.is_alive() or self.stopping:
                    continue
                lived = time.monotonic() - self.started_at.pop(id(proc), 0.0)
                if lived < STARTUP_FAILURE_WINDOW_S:
                    log.error("worker failed at start-up; stopping", pid=proc.pid,
                              exitcode=proc.exitcode)
                    self.stopping = True
                    self.signal_all(signal.SIGTERM)
                    self.wait_all()
                    return 1
                log.warning("worker exited; restarting", pid=proc.pid, exitcode=proc.exitcode)
                self.procs[i] = self.start_one()
            time.sleep(0.2)  # the supervisor has no event loop; signals interrupt the sleep
        self.wait_all()
        log.info("supervisor stopped")
        return 0


def serve(settings: Settings) -> int:
    """Run ``settings.workers`` processes (one: in this process); the exit status."""
    if settings.workers == 1:
        run_worker(settings, reuse_port=False)
        return 0
    if settings.port == 0:
        raise SettingsError("workers: more than one worker needs a fixed port (got port 0)")
    configure_logging(settings)
    port_is_free(settings.host, settings.port)
    return Supervisor(settings).run()


def port_is_free(host: str, port: int) -> None:
    """Raise OSError (address in use) when something listens on ``host:port`` already.

    The workers bind with SO_REUSEPORT, which another server's SO_REUSEPORT socket (a
    gateway started earlier) would let them share: traffic split between two deployments.
    A probe without SO_REUSEPORT fails on any listener. (A port only in TIME_WAIT is free.)
    """
    for family, kind, proto, _, address in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:  # worded as one worker's own bind failure is
                raise OSError(exc.errno, f"error while attempting to bind on address "
                              f"{address!r}: {(exc.strerror or '').lower()}") from None
