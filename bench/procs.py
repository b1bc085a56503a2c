"""Server processes under test: started pinned to a core, measured from /proc, stopped.

CPU time and RSS are read from ``/proc/<pid>/stat`` and ``/proc/<pid>/status`` so every
contender (Python, nginx, uvicorn) is measured the same way, from outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """An unused TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_count() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0))


def raise_fd_limit() -> int:
    """Lift this process's soft open-files limit to the hard one (inherited by children)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def cpu_seconds(pid: int) -> float:
    """utime+stime of one process (threads included), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    # The command name may contain spaces; fields after it are fixed.
    fields = raw[raw.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kb(pid: int) -> int:
    """Resident set size of one process in KiB."""
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE_KB


def source_path(extra: str = "") -> str:
    """PYTHONPATH that imports this checkout's code (src/ first, then bench), not whatever
    checkout the virtualenv's editable install points at."""
    return os.pathsep.join(p for p in (str(REPO / "src"), str(REPO), extra) if p)


def python_cmd(module: str, *args: str) -> list[str]:
    """Command running ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def pinned(cmd: Sequence[str], core: int | None) -> list[str]:
    """Prefix ``cmd`` with taskset when pinning is possible."""
    if core is None or shutil.which("taskset") is None or cpu_count() < 2:
        return list(cmd)
    return ["taskset", "-c", str(core), *cmd]


@dataclass
class Server:
    """One started server process: its pid, port and how to reach it."""

    name: str
    cmd: list[str]
    port: int
    core: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        """Pid of the measured process (taskset execs, so it is the server itself)."""
        assert self.proc is not None
        return self.proc.pid

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:<port>."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the process with its output in a log file (read back on failure)."""
        fd, path = tempfile.mkstemp(prefix=f"bench-{self.name}-", suffix=".log")
        self.log_path = Path(path)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env["PYTHONPATH"] = source_path(env.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(pinned(self.cmd, self.core), stdout=fd, stderr=fd,
                                     stdin=subprocess.DEVNULL, env=env, cwd=REPO,
                                     start_new_session=True)
        os.close(fd)

    def log_tail(self, lines: int = 8) -> str:
        """The last lines the process printed (for 'unavailable' reasons)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])[-600:]

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    async def wait_port(self, timeout_s: float = 20.0) -> None:
        """Wait until the port accepts connections; raise with the log tail if it never does."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.proc and self.proc.returncode}"
                                   f": {self.log_tail()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                return
            except OSError:
                await asyncio.sleep(0.05)  # polling a just-started process; nothing to await
        raise RuntimeError(f"{self.name} did not listen on {self.port} within {timeout_s} s: "
                           f"{self.log_tail()}")

    def cpu(self) -> float:
        """CPU seconds used so far by the server process."""
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        """RSS in KiB now."""
        return rss_kb(self.pid)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; remove the log file."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)


async def start_server(server: Server, timeout_s: float = 20.0) -> Server:
    """Start ``server`` and wait for its port; stop it again if it never listens."""
    server.start()
    try:
        await server.wait_port(timeout_s)
    except BaseException:
        server.stop()
        raise
    return server
