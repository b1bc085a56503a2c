"""Scenario 1: REST proxy throughput (c=64, closed loop) and added latency at 1,000 req/s."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .. import nginx
from ..baselines.static_upstream import BODY
from ..context import Context
from ..gateway import BENCH_SCOPE, GatewayVariant, RunningGateway, start_gateway
from ..httpload import build_request, closed_loop, fetch, open_loop
from ..procs import Server, free_port, python_cmd, start_server
from ..record import Contender, ScenarioResult, guarded, target
from ..redis import redis_server, redis_url
from ..stats import cdf_points, percentile, ratio, summary
from ..wrk import run_wrk

PATH = "/bench/item?id=1"
BASELINE = "naive-aiohttp"


@dataclass
class Target:
    """A started contender: the process to measure and the headers its clients send."""

    server: Server
    headers: dict[str, str]
    stop: Callable[[], None]
    auth: str = "none"


def bench_routes() -> list[dict[str, Any]]:
    """The one proxied route every gateway variant serves."""
    return [{"prefix": "/bench", "upstream": "bench", "scopes": {"*": [BENCH_SCOPE]}}]


async def start_upstream(ctx: Context, core: int | None) -> Server:
    """nginx ``return 200`` when installed, else the raw asyncio responder."""
    port = free_port()
    try:
        server = nginx.static_server(port, core)
    except FileNotFoundError:
        server = Server("py-static", python_cmd("bench.baselines.static_upstream", "--port",
                                                str(port)), port, core)
    return await start_server(server)


def _plain(server: Server) -> Target:
    return Target(server, {}, server.stop)


def _gateway(gw: RunningGateway) -> Target:
    return Target(gw.server, gw.headers, gw.stop, gw.auth)


async def start_contender(name: str, ctx: Context, upstream: Server,
                          redis: Server | None) -> Target:
    """Start one named contender pinned to the server core."""
    core = ctx.server_core
    up = upstream.base_url
    port = free_port()
    if name == "direct":
        return _plain(await start_upstream(ctx, core))
    if name == "nginx-proxy":
        return _plain(await start_server(nginx.proxy_server(port, upstream.port, core)))
    if name == BASELINE:
        return _plain(await start_server(Server(name, python_cmd(
            "bench.baselines.naive_proxy", "--port", str(port), "--upstream", up), port, core)))
    if name == "fastapi-httpx":
        import fastapi  # noqa: F401  (unavailable, not failed, without the bench extra)
        import httpx  # noqa: F401
        import uvicorn  # noqa: F401

        return _plain(await start_server(Server(name, python_cmd(
            "bench.baselines.fastapi_proxy", "--port", str(port), "--upstream", up),
            port, core)))
    variants = {
        "gw-proxy": GatewayVariant(),
        "gw-full": GatewayVariant(auth=True, api_key=True, ratelimit=True, redis_url="redis"),
        "gw-full-nolimit": GatewayVariant(auth=True, api_key=True, redis_url="redis"),
        "gw-full-memory": GatewayVariant(auth=True, api_key=True, ratelimit=True),
    }
    variant = variants[name]
    variant.upstreams = {"bench": up}
    variant.routes = bench_routes()
    if variant.redis_url:
        if redis is None:
            raise FileNotFoundError("redis-server is not installed")
        variant.redis_url = redis_url(redis)
    return _gateway(await start_gateway(name, variant, core))


async def check(contender: Contender, t: Target) -> None:
    """One request must come back 200 with the upstream's exact body."""
    status, body = await fetch(t.server.port, build_request(
        "GET", PATH, f"127.0.0.1:{t.server.port}", t.headers))
    contender.check = {"status": status, "body_ok": body == BODY, "auth": t.auth,
                       "body": body[:200].decode(errors="replace")}
    contender.correct = status == 200 and body == BODY
    if not contender.correct:
        from ..gateway import Unavailable

        raise Unavailable(f"probe GET {PATH} answered {status}: "
                          f"{body[:160].decode(errors='replace')}")


async def closed_run(ctx: Context, t: Target, duration_s: float, connections: int
                     ) -> dict[str, Any]:
    """Saturation run at fixed concurrency; adds server CPU per request."""
    cpu0 = t.server.cpu()
    if ctx.use_wrk:
        run = await run_wrk(t.server.base_url + PATH, connections=connections,
                            duration_s=duration_s, core=ctx.load_core, headers=t.headers)
    else:
        raw = build_request("GET", PATH, f"127.0.0.1:{t.server.port}", t.headers)
        res = await closed_loop(t.server.port, raw, connections=connections,
                                duration_s=duration_s, expect_body=BODY)
        lat = res.latencies_s
        run = {"tool": "python-closed-loop", "requests": res.requests,
               "duration_s": res.duration_s, "rps": res.requests / res.duration_s,
               "p50_s": percentile(lat, 50), "p90_s": percentile(lat, 90),
               "p99_s": percentile(lat, 99), "p999_s": percentile(lat, 99.9),
               "max_s": max(lat, default=0.0), "errors": res.errors,
               "non_2xx": res.non_2xx + res.bad_bodies}
    cpu = t.server.cpu() - cpu0
    run["cpu_s"] = cpu
    run["cpu_us_per_req"] = cpu / run["requests"] * 1e6 if run["requests"] else None
    return run


async def open_run(ctx: Context, t: Target) -> dict[str, Any]:
    """Constant-rate run; latency from each request's scheduled time."""
    p = ctx.profile
    raw = build_request("GET", PATH, f"127.0.0.1:{t.server.port}", t.headers)
    res = await open_loop(t.server.port, raw, rate=p.fixed_rate, duration_s=p.fixed_duration_s,
                          expect_body=BODY)
    lat = res.latencies_s
    return {"rate": p.fixed_rate, "requests": res.requests, "errors": res.errors,
            "non_2xx": res.non_2xx + res.bad_bodies, "p50_s": percentile(lat, 50),
            "p99_s": percentile(lat, 99), "p999_s": percentile(lat, 99.9),
            "cdf": cdf_points(lat, 100)}


async def run_contenders(ctx: Context, result: ScenarioResult, names: list[str],
                         labels: dict[str, str], *, with_open_loop: bool,
                         duration_s: float, extra: Callable[[str, Target, dict[str, Any]],
                                                            Awaitable[None]] | None = None
                         ) -> None:
    """Start every contender once, then interleave rounds (rotating order) of each."""
    upstream = await start_upstream(ctx, ctx.load_core)
    redis: Server | None = None
    with contextlib.suppress(FileNotFoundError):
        redis = await start_server(redis_server(ctx.load_core))
    result.params["upstream"] = upstream.name
    targets: dict[str, Target] = {}
    try:
        for name in names:
            contender = result.add(name, labels[name])

            async def boot(name: str = name, contender: Contender = contender) -> None:
                t = await start_contender(name, ctx, upstream, redis)
                targets[name] = t
                await check(contender, t)
                await closed_run(ctx, t, min(1.0, duration_s / 2),  # warm-up
                                 ctx.profile.proxy_connections)

            await guarded(contender, boot)
        for rnd in range(ctx.profile.rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for name in order:
                contender = result.contenders[name]
                t = targets.get(name)
                if t is None or not contender.ok:
                    continue

                async def one(name: str = name, t: Target = t, rnd: int = rnd) -> None:
                    run = await closed_run(ctx, t, duration_s, ctx.profile.proxy_connections)
                    run["round"] = rnd
                    if with_open_loop:
                        run["fixed_rate"] = await open_run(ctx, t)
                    if extra is not None:
                        await extra(name, t, run)
                    result.contenders[name].runs.append(run)

                await guarded(contender, one)
    finally:
        for t in targets.values():
            t.stop()
        upstream.stop()
        if redis is not None:
            redis.stop()
    for contender in result.contenders.values():
        if contender.ok and contender.runs:
            contender.status = "ok"
            bad = sum(r["errors"] + r["non_2xx"] for r in contender.runs)
            contender.correct = bool(contender.correct) and bad == 0
            if bad:
                contender.reason = f"{bad} errors or non-2xx answers during the runs"


def summarise(result: ScenarioResult) -> None:
    """Medians and spreads per contender; ratios to the naive proxy; added p99 at 1k/s."""
    direct_p99 = {r["round"]: r["fixed_rate"]["p99_s"]
                  for r in result.contenders.get("direct", Contender("", "")).runs
                  if "fixed_rate" in r}
    for c in result.contenders.values():
        if not c.runs:
            continue
        s: dict[str, Any] = {
            "rps": summary(r["rps"] for r in c.runs),
            "cpu_us_per_req": summary(r["cpu_us_per_req"] for r in c.runs),
            "p50_s": summary(r["p50_s"] for r in c.runs),
            "p99_s": summary(r["p99_s"] for r in c.runs),
            "p999_s": summary(r["p999_s"] for r in c.runs),
        }
        fixed = [r["fixed_rate"] for r in c.runs if "fixed_rate" in r]
        if fixed:
            s["fixed_p50_s"] = summary(f["p50_s"] for f in fixed)
            s["fixed_p99_s"] = summary(f["p99_s"] for f in fixed)
            added = [r["fixed_rate"]["p99_s"] - direct_p99[r["round"]] for r in c.runs
                     if "fixed_rate" in r and r["round"] in direct_p99]
            s["added_p99_s"] = summary(added)
            s["fixed_errors"] = sum(f["errors"] + f["non_2xx"] for f in fixed)
        c.summary = s
    base = result.contenders.get(BASELINE)
    base_rps = base.summary.get("rps", {}).get("median") if base else None
    for c in result.contenders.values():
        if c.summary:
            c.summary["rps_ratio_to_naive"] = ratio(c.summary["rps"]["median"], base_rps)


def _median(result: ScenarioResult, name: str, key: str) -> float | None:
    c = result.contenders.get(name)
    if c is None or not c.summary or c.status != "ok":
        return None
    value = c.summary.get(key, {}).get("median")
    return float(value) if value is not None else None


def targets(result: ScenarioResult) -> None:
    """The issue's proxy targets with pass / short-of marks."""
    full = _median(result, "gw-full", "rps")
    naive = _median(result, BASELINE, "rps")
    fast = _median(result, "fastapi-httpx", "rps")
    r1 = ratio(full, naive)
    r2 = ratio(full, fast)
    added = _median(result, "gw-full", "added_p99_s")
    # The upstream issue's own target: the proxy path with request id, metrics and the
    # error handling on (auth and limits off) against the naive proxy.
    r0 = ratio(_median(result, "gw-proxy", "rps"), naive)
    added0 = _median(result, "gw-proxy", "added_p99_s")
    result.targets = [
        target("proxy path (request id, metrics, errors) req/s vs naive aiohttp proxy",
               ">= 1.0x", r0, None if r0 is None else r0 >= 1.0, "x"),
        target("proxy path added p99 at 1,000 req/s", "<= 2 ms",
               None if added0 is None else added0 * 1e3,
               None if added0 is None else added0 <= 0.002, "ms"),
        target("full-stack req/s vs naive aiohttp proxy", ">= 1.0x", r1,
               None if r1 is None else r1 >= 1.0, "x"),
        target("full-stack req/s vs FastAPI+httpx", ">= 12x", r2,
               None if r2 is None else r2 >= 12.0, "x"),
        target("full-stack added p99 at 1,000 req/s", "<= 2 ms",
               None if added is None else added * 1e3,
               None if added is None else added <= 0.002, "ms"),
    ]


LABELS = {
    "direct": "upstream direct (ceiling)",
    "nginx-proxy": "nginx proxy_pass, keep-alive",
    BASELINE: "naive aiohttp proxy (1 shared ClientSession)",
    "fastapi-httpx": "FastAPI + httpx (uvicorn)",
    "gw-proxy": "luki-gateway proxy (auth off, limits off)",
    "gw-full": "luki-gateway full stack (API key + Redis limit + metrics)",
}


async def run(ctx: Context) -> ScenarioResult:
    """Scenario 1 in full."""
    result = ScenarioResult("proxy", "REST proxy throughput and latency", ctx.profile.name)
    result.params.update({"connections": ctx.profile.proxy_connections,
                          "duration_s": ctx.profile.proxy_duration_s,
                          "fixed_rate": ctx.profile.fixed_rate, "rounds": ctx.profile.rounds,
                          "load_tool": "wrk" if ctx.use_wrk else "python-closed-loop",
                          "path": PATH})
    await run_contenders(ctx, result, list(LABELS), LABELS, with_open_loop=True,
                         duration_s=ctx.profile.proxy_duration_s)
    summarise(result)
    targets(result)
    return result
