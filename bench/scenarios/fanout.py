"""Scenario 2: fan-out of one 100-byte event to N WebSocket / SSE subscribers.

Per event: time from the publish request until the last subscriber has it. Per run: the
server's CPU time (utime+stime) per broadcast, which compares servers fairly on two cores
where the receiving clients bound the latency.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from ..context import Context
from ..gateway import Unavailable
from ..hubs import HubTarget, Publisher, start_hub
from ..pool import SubscriberPool, log
from ..record import ScenarioResult, guarded, target
from ..stats import percentile, ratio, summary

HUBS = {"gw-hub": "luki-gateway hub (JWT auth, channels, queues, history)",
        "naive-hub": "naive aiohttp hub (await send per socket)",
        "raw-loop": "raw loop: one prepared frame per transport (floor)"}
KINDS = ("ws", "sse")
BASELINE = "naive-hub"
FLOOR = "raw-loop"


async def _confirm(pool: SubscriberPool, pub: Publisher, tries: int = 5) -> None:
    """Warm-up events until every subscriber got one (subscriptions are live)."""
    for i in range(tries):
        seq = -1 - i
        status, body = await pub.publish(seq)
        if not 200 <= status < 300:
            raise Unavailable(f"publish answered {status}: {body[:200].decode(errors='replace')}")
        try:
            await pool.wait_event(seq, 5.0)
            return
        except TimeoutError:
            continue
    raise Unavailable("warm-up events never reached every subscriber "
                      f"({pool.ready} ready, {pool.failed} refused)")


async def _events(hub: HubTarget, pool: SubscriberPool, pub: Publisher, count: int,
                  start_seq: int) -> dict[str, Any]:
    """Publish ``count`` events one after another; time and CPU each batch."""
    times: list[float] = []
    cpu0 = hub.server.cpu()
    for i in range(count):
        seq = start_seq + i
        t0 = time.monotonic()
        status, body = await pub.publish(seq)
        if not 200 <= status < 300:
            raise RuntimeError(f"publish answered {status}: {body[:200]!r}")
        last = await pool.wait_event(seq, 30.0)
        times.append(last - t0)
    cpu = hub.server.cpu() - cpu0
    n = pool.ready
    return {"subscribers": n, "events": count, "refused": pool.failed,
            "fanout_p50_s": statistics.median(times), "fanout_p99_s": percentile(times, 99),
            "fanout_max_s": max(times), "cpu_s": cpu, "cpu_per_broadcast_s": cpu / count,
            "cpu_per_subscriber_us": cpu / count / n * 1e6 if n else None}


async def _one_server(ctx: Context, result: ScenarioResult, hub_name: str, kind: str,
                      rnd: int) -> None:
    contender = result.contenders[f"{hub_name}-{kind}"]
    p = ctx.profile

    async def go() -> None:
        hub = await start_hub(hub_name, ctx.server_core)
        pool = SubscriberPool(kind=kind, port=hub.server.port,
                              path=hub.ws_path if kind == "ws" else hub.sse_path,
                              headers=hub.headers, core=ctx.load_core,
                              per_process=p.subscribers_per_process)
        pub = Publisher(hub)
        try:
            seq = 0
            for level in p.fanout_levels:
                await pool.grow(level)
                if pool.ready < level * 0.99:
                    raise Unavailable(f"only {pool.ready} of {level} subscribers accepted; "
                                      f"{'; '.join(pool.errors)[:300]}")
                await _confirm(pool, pub)
                run = await _events(hub, pool, pub, p.fanout_events, seq)
                seq += p.fanout_events
                run.update({"round": rnd, "level": level})
                contender.runs.append(run)
                log(f"{contender.name} {level} subs: "
                    f"{run['cpu_per_subscriber_us']:.1f} us/sub, "
                    f"p50 {run['fanout_p50_s'] * 1e3:.1f} ms")
            contender.correct = True
        finally:
            pub.close()
            await pool.close()
            hub.stop()

    await guarded(contender, go)


def summarise(result: ScenarioResult, levels: tuple[int, ...]) -> None:
    """Per contender and level: medians across rounds; ratios to naive hub and floor."""
    for c in result.contenders.values():
        per_level: dict[str, Any] = {}
        for level in levels:
            runs = [r for r in c.runs if r["level"] == level]
            if runs:
                per_level[str(level)] = {
                    "cpu_per_broadcast_s": summary(r["cpu_per_broadcast_s"] for r in runs),
                    "cpu_per_subscriber_us": summary(r["cpu_per_subscriber_us"] for r in runs),
                    "fanout_p50_s": summary(r["fanout_p50_s"] for r in runs),
                    "fanout_p99_s": summary(r["fanout_p99_s"] for r in runs),
                }
        c.summary = {"levels": per_level}
        if c.runs and c.ok:
            c.status = "ok"
    for kind in KINDS:
        for level in levels:
            base = _cpu(result, f"{BASELINE}-{kind}", level)
            floor = _cpu(result, f"{FLOOR}-{kind}", level)
            for hub in HUBS:
                c = result.contenders[f"{hub}-{kind}"]
                entry = c.summary["levels"].get(str(level))
                if entry is not None:
                    mine = entry["cpu_per_broadcast_s"]["median"]
                    entry["cpu_ratio_to_naive"] = ratio(mine, base)
                    entry["cpu_ratio_to_floor"] = ratio(mine, floor)


def _cpu(result: ScenarioResult, name: str, level: int) -> float | None:
    c = result.contenders.get(name)
    if c is None or c.status != "ok":
        return None
    entry = c.summary.get("levels", {}).get(str(level))
    return entry["cpu_per_broadcast_s"]["median"] if entry else None


async def run(ctx: Context) -> ScenarioResult:
    """Scenario 2: every hub x transport, rounds interleaved, levels ascending per server."""
    p = ctx.profile
    result = ScenarioResult("fanout", "Fan-out to WebSocket and SSE subscribers", p.name)
    result.params.update({"levels": list(p.fanout_levels), "events": p.fanout_events,
                          "event_bytes": 100, "rounds": p.fanout_rounds})
    names = list(HUBS)
    for kind in KINDS:
        for hub in names:
            result.add(f"{hub}-{kind}", f"{HUBS[hub]}, {kind.upper()}")
    for rnd in range(p.fanout_rounds):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for kind in KINDS:
            for hub in order:
                await _one_server(ctx, result, hub, kind, rnd)
                await asyncio.sleep(p.settle_s)  # let the kernel reap the closed sockets
    summarise(result, p.fanout_levels)
    top = max(p.fanout_levels)
    result.targets = []
    for kind in KINDS:
        mine = _cpu(result, f"gw-hub-{kind}", top)
        floor = _cpu(result, f"{FLOOR}-{kind}", top)
        r = ratio(mine, floor)
        goal = "<= 1.2x" if kind == "ws" else "(no target; shown for SSE)"
        result.targets.append(target(
            f"gateway CPU per broadcast vs raw loop, {top} {kind.upper()} subscribers", goal, r,
            None if r is None or kind != "ws" else r <= 1.2, "x"))
    return result


