"""wrk (closed loop, fixed connections) with a Lua hook that prints its numbers as JSON."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from typing import Any

from .procs import pinned

_LUA = """
local headers_json = os.getenv("BENCH_HEADERS") or ""
for k, v in string.gmatch(headers_json, '"([^"]+)":%s*"([^"]*)"') do
  wrk.headers[k] = v
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%f}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


def _script() -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_LUA)
        return f.name


def wrk_binary() -> str | None:
    """Path of wrk, or None."""
    return shutil.which("wrk")


async def run_wrk(url: str, *, connections: int, duration_s: float, core: int | None,
                  headers: dict[str, str] | None = None, threads: int = 1
                  ) -> dict[str, Any]:
    """Run wrk once; returns req/s, latency percentiles (seconds) and error counts."""
    binary = wrk_binary()
    if binary is None:
        raise FileNotFoundError("wrk is not installed")
    script = _script()
    try:
        cmd = pinned([binary, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s",
                      "--timeout", "5s", "-s", script, url], core)
        env = {"BENCH_HEADERS": json.dumps(headers or {}), "PATH": "/usr/bin:/bin"}
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        out, err = await proc.communicate()
    finally:
        os.unlink(script)
    text = out.decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {err.decode(errors='replace')[-300:]} {text[-300:]}")
    raw = json.loads(line.removeprefix("BENCHJSON "))
    secs = raw["duration_us"] / 1e6
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    return {
        "tool": "wrk", "requests": raw["requests"], "duration_s": secs,
        "rps": raw["requests"] / secs if secs else 0.0,
        "p50_s": raw["p50_us"] / 1e6, "p90_s": raw["p90_us"] / 1e6,
        "p99_s": raw["p99_us"] / 1e6, "p999_s": raw["p999_us"] / 1e6,
        "max_s": raw["max_us"] / 1e6, "errors": errors, "non_2xx": raw["status"],
    }
