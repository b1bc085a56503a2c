"""Machine facts and versions recorded with every result file."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from typing import Any

from .context import Context
from .gateway import gateway_version
from .nginx import nginx_binary
from .wrk import wrk_binary

_PACKAGES = ("aiohttp", "uvloop", "redis", "fastapi", "httpx", "uvicorn", "httptools",
             "prometheus-client", "structlog")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _tool_version(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0][:120] if text else "unknown"


def _git_commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"


def machine_facts(ctx: Context) -> dict[str, Any]:
    """CPU, memory, kernel, Python, package and tool versions, core layout."""
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    versions: dict[str, str] = {"luki-gateway": gateway_version(),
                                "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    nginx = nginx_binary()
    wrk = wrk_binary()
    versions["nginx"] = _tool_version([nginx, "-v"]) if nginx else "not installed"
    versions["wrk"] = _tool_version([wrk, "--version"]) if wrk else "not installed"
    versions["redis-server"] = _tool_version(["redis-server", "--version"])
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "memory_mb": mem_kb // 1024,
        "kernel": platform.release(), "platform": platform.platform(),
        "git_commit": _git_commit(), "server_core": ctx.server_core,
        "load_core": ctx.load_core, "load_tool": "wrk" if ctx.use_wrk else "python",
        "profile": ctx.profile.name, "versions": versions,
    }
