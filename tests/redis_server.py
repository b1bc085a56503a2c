"""A private redis-server for tests: free port, no persistence, can be paused and killed."""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

INSTALL_HINT = ("redis-server was not found on PATH. The tests start a private one. "
                "Install it: `apt-get install redis-server` (Debian/Ubuntu), "
                "`dnf install redis` (Fedora) or `brew install redis` (macOS).")


def free_port() -> int:
    """An unused TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


_READY = b"Ready to accept connections"


def _wait_until_ready(proc: subprocess.Popen[bytes], log: IO[bytes], within_s: float) -> None:
    """Block until redis-server logs that it accepts connections (its own ready event)."""
    deadline = time.monotonic() + within_s
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(log, selectors.EVENT_READ)
        while _READY not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise RuntimeError(f"redis-server did not start within {within_s:.0f} s")
            chunk = os.read(log.fileno(), 4096)
            if not chunk:
                proc.wait()
                raise RuntimeError(f"redis-server exited with {proc.returncode}: "
                                   f"{seen[-300:].decode(errors='replace')}")
            seen = seen[-4096:] + chunk


class RedisServer:
    """One private redis-server process with fault-injection helpers."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(INSTALL_HINT)
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="luki-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        """redis:// URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart) the server on the same port and wait until it is ready."""
        proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--loglevel", "notice",
             "--protected-mode", "no"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.proc = proc
        self.paused = False
        assert proc.stdout is not None
        try:
            _wait_until_ready(proc, proc.stdout, within_s=10.0)
        finally:
            # redis-server ignores SIGPIPE: its later log lines are simply dropped.
            proc.stdout.close()

    def stop(self) -> None:
        """Kill the server (SIGKILL: as abrupt as a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            if self.paused:
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    kill = stop

    def restart(self) -> None:
        """Kill and start again on the same port (empty: no persistence)."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """Unfreeze after :meth:`pause`."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def flushall(self) -> None:
        """Empty every database (between tests)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)

    def close(self) -> None:
        """Stop and remove the data directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
