"""`luki-gateway dev`: the gateway plus every reference upstream, in one process.

Each upstream whose configured URL is local (127.0.0.1 / localhost) gets its reference
app on that port, or on a free port when that one is taken (the gateway is then pointed
there). Upstreams configured elsewhere (``MEMORY_URL=https://...``) are used as they are.
The reference apps run on their own event loop in a background thread, so they behave
like separate services and the gateway's loop stays the one ``serve`` would run.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import yarl
from aiohttp import web

from ..serving import run_worker
from ..settings import Settings
from .agent import create_agent_app
from .cognitive import create_cognitive_app
from .engagement import create_engagement_app
from .memory import create_memory_app
from .reports import create_reports_app

REFERENCE_APPS: Mapping[str, Callable[[], web.Application]] = types.MappingProxyType({
    "agent": create_agent_app,
    "memory": create_memory_app,
    "cognitive": create_cognitive_app,
    "engagement": create_engagement_app,
    "reports": create_reports_app,
})

_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(slots=True)
class Reference:
    """One reference upstream: its name, the socket it serves on, its URL."""

    name: str
    sock: socket.socket

    @property
    def url(self) -> str:
        """The base URL the gateway should use for it."""
        host, port = self.sock.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _bind(host: str, port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        # As any server does (asyncio's included): a port left in TIME_WAIT by the last
        # run is free; only one really in use sends the reference to another port.
        if port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        return None
    sock.setblocking(False)
    return sock


def bind_references(settings: Settings) -> tuple[Settings, list[Reference]]:
    """Bind a socket for every local reference upstream; settings pointed at them."""
    references: list[Reference] = []
    upstreams = dict(settings.upstreams)
    for name in REFERENCE_APPS:
        configured = upstreams.get(name)
        if configured is None:
            continue
        url = yarl.URL(configured)
        if url.host not in _LOCAL_HOSTS:
            continue  # a real backend: leave it alone
        host = "127.0.0.1" if url.host == "localhost" else url.host
        sock = _bind(host, url.port or 80) or _bind(host, 0)
        if sock is None:
            raise OSError(f"cannot bind a port for the reference {name} upstream")
        reference = Reference(name, sock)
        references.append(reference)
        upstreams[name] = reference.url + (url.path.rstrip("/") if url.path != "/" else "")
    return settings.replace(upstreams=types.MappingProxyType(upstreams)), references


class ReferenceStack:
    """The reference upstreams, served on their own loop in a daemon thread."""

    def __init__(self, references: list[Reference]) -> None:
        self.references = references
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="luki-devstack", daemon=True)

    def start(self, timeout_s: float = 10.0) -> None:
        """Start serving; returns once every reference upstream is accepting."""
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("reference upstreams did not start in time")
        if self._error is not None:
            raise RuntimeError(f"reference upstreams failed to start: {self._error}")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving and wait for the thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runners: list[web.AppRunner] = []
        try:
            for reference in self.references:
                runner = web.AppRunner(REFERENCE_APPS[reference.name](), access_log=None)
                await runner.setup()
                runners.append(runner)
                await web.SockSite(runner, reference.sock).start()
            self._ready.set()
            await self._stop.wait()
        finally:
            for runner in reversed(runners):
                await runner.cleanup()


def banner(settings: Settings, references: list[Reference], api_key: str | None) -> str:
    """What a newcomer needs: where everything is, what to try, how to stop."""
    base = f"http://{settings.host}:{settings.port}"
    local = {r.name for r in references}
    width = max(len(n) for n in settings.upstreams) if settings.upstreams else 0
    lines = [f"luki-gateway dev: gateway on {base}  (Ctrl+C stops everything)",
             "  upstreams:"]
    for name, url in settings.upstreams.items():
        kind = "reference" if name in local else "external"
        lines.append(f"    {name:<{width}}  {url}  ({kind})")
    # The demo page reads the key from the fragment (never sent to the server or logged).
    demo = f"{base}/#key={api_key}" if api_key else f"{base}/"
    lines += [f"  demo page {demo}", f"  health    {base}/health",
              f"  metrics   {base}/metrics", f"  API docs  {base}/docs"]
    auth = f" -H 'Authorization: Bearer {api_key}'" if api_key else ""
    lines += [
        "  try:",
        f"    curl {base}/health",
        f"    curl -X POST {base}/v1/elr/ingest_text{auth} -H 'Content-Type: application/json'"
        " -d '{\"text\": \"I walked to the park with Anna\"}'",
        f"    curl '{base}/v1/elr/items'{auth}",
        f"    curl '{base}/v1/elr/search?q=park'{auth}",
        f"    curl '{base}/v1/activities/recommend?k=3'{auth}",
        f"    curl -N -X POST {base}/v1/chat/stream{auth} -H 'Content-Type: application/json'"
        " -d '{\"message\": \"hello\"}'",
    ]
    return "\n".join(lines)


def run_dev(settings: Settings) -> int:
    """Start the reference upstreams, then the gateway; tell the newcomer where things are."""
    settings, references = bind_references(settings)
    stack = ReferenceStack(references)
    stack.start()
    api_key: str | None = None
    extra: list[str] = []
    if settings.is_development:
        # auth: a working dev API key and a dev JWT for the curl examples.
        from ..auth.dev import dev_credentials

        creds = dev_credentials(settings)  # may point settings at the dev keys file
        settings = creds.settings
        api_key = creds.api_key
        base = f"http://{settings.host}:{settings.port}"
        extra = [f"  API key   {creds.api_key}", f"  JWT       {creds.token}",
                 f"  ticket:   curl -X POST {base}/v1/auth/ticket -H 'Authorization: Bearer "
                 f"{creds.api_key}'"]
    # The dev banner is command-line output (stderr), like the CLI's own messages.
    sys.stderr.write("\n".join([banner(settings, references, api_key), *extra]) + "\n")
    try:
        run_worker(settings, reuse_port=False)
    finally:
        stack.stop()
    return 0
