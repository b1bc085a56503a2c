"""A private redis-server on a free port for one scenario (never the machine's 6379)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .procs import Server, free_port


def redis_server(core: int | None) -> Server:
    """A redis-server without persistence; raises FileNotFoundError when not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not installed")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    return Server("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no", "--dir", str(workdir), "--loglevel",
                            "warning", "--protected-mode", "no", "--maxclients", "20000"],
                  port, core)


def redis_url(server: Server) -> str:
    """redis:// URL of the server."""
    return f"redis://127.0.0.1:{server.port}/0"
