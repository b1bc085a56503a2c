"""A pool of subscriber client processes (``bench.subscribers``) pinned to the load core."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass, field

from .procs import REPO, pinned, python_cmd


@dataclass
class _Client:
    proc: asyncio.subprocess.Process
    wanted: int
    ready: int = 0
    failed: int = 0
    got: dict[int, float] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None


class SubscriberPool:
    """Subscriber processes for one server; events are timed by their last receipt."""

    def __init__(self, *, kind: str, port: int, path: str, headers: dict[str, str],
                 core: int | None, per_process: int, idle: bool = False,
                 channel: str = "broadcast:bench") -> None:
        self.kind = kind
        self.port = port
        self.path = path
        self.headers = headers
        self.core = core
        self.per_process = per_process
        self.idle = idle
        self.channel = channel
        self.clients: list[_Client] = []
        self.changed = asyncio.Condition()
        self.errors: list[str] = []

    @property
    def ready(self) -> int:
        """Subscribers connected and subscribed."""
        return sum(c.ready for c in self.clients)

    @property
    def failed(self) -> int:
        """Subscribers the server refused or never answered."""
        return sum(c.failed for c in self.clients)

    async def grow(self, total: int, timeout_s: float = 300.0) -> None:
        """Start more client processes until ``total`` subscribers were attempted."""
        have = sum(c.wanted for c in self.clients)
        started: list[_Client] = []
        while have < total:
            n = min(self.per_process, total - have)
            cmd = python_cmd("bench.subscribers", "--kind", self.kind, "--port",
                             str(self.port), "--path", self.path, "--n", str(n),
                             "--channel", self.channel, "--headers", json.dumps(self.headers))
            if self.idle:
                cmd.append("--idle")
            proc = await asyncio.create_subprocess_exec(
                *pinned(cmd, self.core), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO)
            client = _Client(proc, n)
            client.reader = asyncio.ensure_future(self._read(client))
            self.clients.append(client)
            started.append(client)
            have += n
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(
                lambda: all(c.ready + c.failed >= c.wanted or c.proc.returncode is not None
                            for c in started)), timeout_s)

    async def _read(self, client: _Client) -> None:
        assert client.proc.stdout is not None
        while True:
            line = await client.proc.stdout.readline()
            if not line:
                break
            parts = line.decode().split()
            if parts[0] == "ready":
                client.ready, client.failed = int(parts[1]), int(parts[2])
            elif parts[0] == "got":
                client.got[int(parts[1])] = float(parts[2])
            async with self.changed:
                self.changed.notify_all()
        if client.proc.stderr is not None:
            err = (await client.proc.stderr.read()).decode(errors="replace").strip()
            if err:
                self.errors.append(err[-300:])
        async with self.changed:
            self.changed.notify_all()

    async def wait_event(self, seq: int, timeout_s: float) -> float:
        """monotonic time at which the last live subscriber had event ``seq``."""
        live = [c for c in self.clients if c.ready]

        def done() -> bool:
            return all(seq in c.got for c in live)

        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(done), timeout_s)
        return max(c.got[seq] for c in live)

    async def close(self) -> None:
        """Close stdin of every client (they exit and drop their connections)."""
        for c in self.clients:
            if c.proc.stdin is not None and not c.proc.stdin.is_closing():
                c.proc.stdin.close()
        for c in self.clients:
            try:
                await asyncio.wait_for(c.proc.wait(), 10)
            except TimeoutError:
                c.proc.kill()
                await c.proc.wait()
            if c.reader is not None:
                await c.reader
        self.clients.clear()


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"bench:   {message}", file=sys.stderr, flush=True)
