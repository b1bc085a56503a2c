"""luki-gateway as a contender: a TOML config per variant, ``luki-gateway serve``, credentials.

A variant that cannot be started or whose feature is not built yet raises ``Unavailable``
with the reason, so the scenario reports it instead of crashing the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .httpload import build_request, fetch
from .procs import REPO, Server, free_port, python_cmd, source_path, start_server

JWT_SECRET = "bench-jwt-secret-not-for-production-0123456789"
BENCH_SCOPE = "bench:read"
HIGH_LIMIT = 1_000_000_000


class Unavailable(Exception):
    """A contender cannot run here (not installed, not built yet); the message says why."""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(config: dict[str, Any]) -> str:
    """Enough TOML for a gateway config: scalars, tables, arrays of tables."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []
    for key, value in config.items():
        if isinstance(value, dict) and key != "scopes":
            tables.append((key, value))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            arrays.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for key, table in tables:
        lines.append(f"\n[{key}]")
        lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items()]
    for key, items in arrays:
        for item in items:
            lines.append(f"\n[[{key}]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


@dataclass
class GatewayVariant:
    """How one gateway contender is configured."""

    auth: bool = False
    ratelimit: bool = False
    redis_url: str = ""
    upstreams: dict[str, str] = field(default_factory=dict)
    routes: list[dict[str, Any]] = field(default_factory=list)
    api_key: bool = False


def gateway_config(variant: GatewayVariant, port: int, workdir: Path) -> dict[str, Any]:
    """The TOML-shaped config of ``variant``."""
    config: dict[str, Any] = {
        "environment": "development", "host": "127.0.0.1", "port": port,
        "log_level": "WARNING", "access_log": False, "shutdown_grace_s": 1.0,
        "upstreams": variant.upstreams or {"bench": "http://127.0.0.1:9"},
        "auth": {"enabled": variant.auth, "jwt_secret": JWT_SECRET,
                 "api_keys_file": str(workdir / "keys.json")},
        "ratelimit": {"enabled": variant.ratelimit, "per_min": HIGH_LIMIT,
                      "per_hour": HIGH_LIMIT, "max_streams": 0, "max_ws_per_user": 0},
        "routes": variant.routes,
    }
    if variant.redis_url:
        config["redis_url"] = variant.redis_url
    return config


def bench_token(sub: str = "bench", scopes: tuple[str, ...] = (BENCH_SCOPE, "events:publish",
                                                             "chat:write")) -> str:
    """A dev HS256 JWT the bench gateways accept (their secret is JWT_SECRET)."""
    import jwt

    now = int(time.time())
    return jwt.encode({"sub": sub, "scope": " ".join(scopes), "iat": now, "exp": now + 7200},
                      JWT_SECRET, algorithm="HS256")


def create_api_key(config_path: Path) -> str:
    """``luki-gateway keys create`` against this config; the key is stdout's one line."""
    cmd = python_cmd("luki_gateway", "keys", "create", "--config", str(config_path),
                     "--owner", "bench", "--scope", BENCH_SCOPE)
    env = {**os.environ, "PYTHONPATH": source_path()}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env,
                              cwd=REPO, check=False)
    except subprocess.TimeoutExpired as exc:
        raise Unavailable("`luki-gateway keys create` timed out") from exc
    key = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or not key or " " in key:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise Unavailable(f"`luki-gateway keys create` failed (exit {done.returncode}): "
                          f"{reason}")
    return key


@dataclass
class RunningGateway:
    """A started gateway process and the credentials its clients use."""

    server: Server
    headers: dict[str, str]
    workdir: Path
    auth: str = "none"

    def stop(self) -> None:
        """Stop the process and remove its config directory."""
        self.server.stop()
        for child in self.workdir.iterdir():
            child.unlink(missing_ok=True)
        self.workdir.rmdir()


async def start_gateway(name: str, variant: GatewayVariant, core: int | None
                        ) -> RunningGateway:
    """Write the config, create credentials, start ``luki-gateway serve``, wait for /ready."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-gw-"))
    port = free_port()
    config_path = workdir / "gateway.toml"
    config_path.write_text(to_toml(gateway_config(variant, port, workdir)))
    headers: dict[str, str] = {}
    server = Server(name, python_cmd("luki_gateway", "serve", "--config", str(config_path)),
                    port, core)
    running = RunningGateway(server, headers, workdir)
    try:
        if variant.api_key:
            try:
                key = await asyncio.to_thread(create_api_key, config_path)
                headers["Authorization"] = f"Bearer {key}"
                running.auth = "api-key"
            except Unavailable as exc:
                # Keep measuring the rest of the stack; the report says which auth ran.
                headers["Authorization"] = f"Bearer {bench_token()}"
                running.auth = f"jwt (API key unavailable: {exc})"
        elif variant.auth:
            headers["Authorization"] = f"Bearer {bench_token()}"
            running.auth = "jwt"
        try:
            await start_server(server, timeout_s=30)
        except RuntimeError as exc:
            raise Unavailable(f"gateway did not start: {exc}") from exc
        await wait_ready(server)
    except BaseException:
        running.stop()
        raise
    return running


async def wait_ready(server: Server, timeout_s: float = 15.0) -> None:
    """Poll /ready until 200 (Redis connected, start-up done)."""
    deadline = time.monotonic() + timeout_s
    raw = build_request("GET", "/ready", f"127.0.0.1:{server.port}")
    status = 0
    while time.monotonic() < deadline:
        try:
            status, _ = await fetch(server.port, raw)
            if status == 200:
                return
        except (OSError, TimeoutError, ValueError):
            pass
        await asyncio.sleep(0.1)  # polling a starting process; nothing to await
    raise Unavailable(f"gateway /ready answered {status} for {timeout_s} s")


async def scrape_metric(port: int, name: str) -> float:
    """Sum of every sample of one metric on the gateway's /metrics (0 when absent)."""
    status, body = await fetch(port, build_request("GET", "/metrics", f"127.0.0.1:{port}"))
    if status != 200:
        return 0.0
    total = 0.0
    for line in body.decode(errors="replace").splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
            with contextlib.suppress(ValueError):
                total += float(line.rsplit(" ", 1)[1])
    return total


def gateway_version() -> str:
    """luki-gateway's version string (from the package under test)."""
    try:
        sys.path.insert(0, str(REPO / "src"))
        from luki_gateway import __version__

        return str(__version__)
    except ImportError:
        return "unknown"
