"""Scenario 3: RSS growth per idle WebSocket / SSE connection at rising connection counts."""

from __future__ import annotations

import asyncio
from typing import Any

from ..context import Context
from ..gateway import Unavailable, bench_token
from ..hubs import start_hub
from ..pool import SubscriberPool, log
from ..record import ScenarioResult, guarded, target
from ..stats import ratio

SERVERS = {"gw-hub": "luki-gateway", "naive-hub": "naive aiohttp hub",
           "bare-aiohttp": "bare aiohttp handler (reference)"}
KINDS = ("ws", "sse")


async def _measure(ctx: Context, result: ScenarioResult, name: str, kind: str) -> None:
    contender = result.contenders[f"{name}-{kind}"]

    async def go() -> None:
        hub = await start_hub(name, ctx.server_core)
        # Every server gets the same request, the gateway's credential included: the parsed
        # upgrade request is part of each connection's cost (a 200-byte header is ~0.4 KB
        # of it), so the servers must not differ in what their clients send.
        headers = hub.headers or {"Authorization": f"Bearer {bench_token()}"}
        pool = SubscriberPool(kind=kind, port=hub.server.port,
                              path=hub.ws_path if kind == "ws" else hub.sse_path,
                              headers=headers, core=ctx.load_core, per_process=5000,
                              idle=True)
        try:
            await asyncio.sleep(ctx.profile.settle_s)
            base = hub.server.rss()
            for level in ctx.profile.memory_levels:
                await pool.grow(level, timeout_s=300)
                if pool.ready < level * 0.99:
                    raise Unavailable(f"only {pool.ready} of {level} connections accepted; "
                                      f"{'; '.join(pool.errors)[:300]}")
                await asyncio.sleep(ctx.profile.settle_s)
                rss = hub.server.rss()
                run: dict[str, Any] = {"level": level, "connections": pool.ready,
                                       "rss_base_kb": base, "rss_kb": rss,
                                       "per_connection_kb": (rss - base) / pool.ready}
                contender.runs.append(run)
                log(f"{contender.name} {pool.ready} idle: {run['per_connection_kb']:.1f} KB/conn")
            contender.correct = True
            contender.status = "ok"
        finally:
            await pool.close()
            hub.stop()

    await guarded(contender, go)


def _at(result: ScenarioResult, name: str, level: int) -> float | None:
    c = result.contenders.get(name)
    if c is None or c.status != "ok":
        return None
    run = next((r for r in c.runs if r["level"] == level), None)
    return float(run["per_connection_kb"]) if run else None


async def run(ctx: Context) -> ScenarioResult:
    """Scenario 3: one server per contender and transport, levels ascending."""
    p = ctx.profile
    result = ScenarioResult("memory", "Memory per idle connection", p.name)
    result.params.update({"levels": list(p.memory_levels)})
    result.notes.append("Every server's clients send the same request headers (the "
                        "gateway's bearer JWT included; the baselines ignore it).")
    for kind in KINDS:
        for name, label in SERVERS.items():
            result.add(f"{name}-{kind}", f"{label}, idle {kind.upper()}")
    for kind in KINDS:
        for name in SERVERS:
            await _measure(ctx, result, name, kind)
            await asyncio.sleep(ctx.profile.settle_s)  # let the kernel reap closed sockets
    top = max(p.memory_levels)
    for c in result.contenders.values():
        bare = _at(result, f"bare-aiohttp-{c.name.rsplit('-', 1)[1]}", top)
        mine = _at(result, c.name, top)
        c.summary = {"per_connection_kb_at_top": mine,
                     "extra_kb_over_bare": None if mine is None or bare is None
                     else mine - bare,
                     "ratio_to_naive": ratio(mine, _at(
                         result, f"naive-hub-{c.name.rsplit('-', 1)[1]}", top))}
    gw = _at(result, "gw-hub-ws", top)
    bare_ws = _at(result, "bare-aiohttp-ws", top)
    extra = None if gw is None or bare_ws is None else gw - bare_ws
    result.targets = [target(f"RSS per idle WebSocket at {top} vs bare aiohttp handler",
                             "<= bare + 1.5 KB", extra,
                             None if extra is None else extra <= 1.5, "KB over bare")]
    return result
