"""Scenario 4: chat relay of the reference agent's SSE stream at 20 tokens/s.

Direct from the agent vs through the gateway vs a naive aiohttp SSE relay; 1, 100 and 300
concurrent turns. Reported: added TTFT (p50/p99), added inter-token gap (p99) and relay CPU
per relayed token event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..chatload import Turn, concurrent_turns
from ..context import Context
from ..gateway import GatewayVariant, Unavailable, scrape_metric, start_gateway
from ..pool import log
from ..procs import Server, free_port, python_cmd, start_server
from ..record import ScenarioResult, guarded, target
from ..stats import percentile, summary

PATH = "/v1/chat/stream"
RELAYS = {"agent-direct": "reference agent, direct (no relay)",
          "naive-relay": "naive aiohttp SSE relay",
          "gw-chat": "luki-gateway /v1/chat/stream (JWT auth)"}
TOKENS_PER_S = 20.0


@dataclass
class Relay:
    """A started relay (or the agent itself) and its client headers."""

    server: Server | None
    port: int
    headers: dict[str, str]
    stop: Callable[[], None]


async def _start(name: str, ctx: Context, agent: Server) -> Relay:
    if name == "agent-direct":
        return Relay(None, agent.port, {}, lambda: None)
    if name == "naive-relay":
        port = free_port()
        server = await start_server(Server(name, python_cmd(
            "bench.baselines.naive_sse_relay", "--port", str(port), "--upstream",
            agent.base_url), port, ctx.server_core))
        return Relay(server, port, {}, server.stop)
    gw = await start_gateway(name, GatewayVariant(auth=True, upstreams={
        "agent": agent.base_url}), ctx.server_core)
    return Relay(gw.server, gw.server.port, gw.headers, gw.stop)


_OWN = ("luki_chat_time_to_first_token_seconds_sum",
        "luki_chat_time_to_first_token_seconds_count",
        "luki_chat_upstream_ttft_seconds_sum", "luki_chat_upstream_ttft_seconds_count")


async def _own_ttft(relay: Relay) -> list[float]:
    """The gateway's own TTFT histograms (client request -> first token; upstream part)."""
    return [await scrape_metric(relay.port, name) for name in _OWN]


def _own_means(before: list[float], after: list[float]) -> dict[str, Any]:
    """Mean TTFT as the gateway saw it, and how much of it was spent before the upstream."""
    d = [b - a for a, b in zip(before, after, strict=True)]
    if not d[1] or not d[3]:
        return {}
    total, upstream = d[0] / d[1], d[2] / d[3]
    return {"gw_ttft_mean_s": total, "gw_upstream_ttft_mean_s": upstream,
            "gw_own_ttft_mean_s": total - upstream}


def _turn_stats(turns: list[Turn], tokens: int) -> dict[str, Any]:
    ttft = [t.ttft_s for t in turns if t.ttft_s is not None]
    gaps = [g for t in turns for g in t.gaps_s]
    complete = sum(1 for t in turns if t.ended == "done" and len(t.token_times) == tokens)
    return {"turns": len(turns), "complete": complete,
            "statuses": sorted({t.status for t in turns}),
            "endings": sorted({t.ended for t in turns}),
            "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
            "gap_p50_s": percentile(gaps, 50), "gap_p99_s": percentile(gaps, 99),
            "tokens": sum(len(t.token_times) for t in turns)}


async def run(ctx: Context) -> ScenarioResult:
    """Scenario 4: rounds interleave the three paths at each concurrency level."""
    p = ctx.profile
    result = ScenarioResult("chat", "Chat relay (SSE) at 20 tokens/s", p.name)
    result.params.update({"levels": list(p.chat_levels), "tokens_per_turn": p.chat_tokens,
                          "tokens_per_s": TOKENS_PER_S, "rounds": p.chat_rounds,
                          "single_turns": p.chat_single_turns})
    for name, label in RELAYS.items():
        result.add(name, label)
    agent_port = free_port()
    agent = await start_server(Server("agent", python_cmd(
        "bench.agent_server", "--port", str(agent_port), "--tokens", str(p.chat_tokens),
        "--tokens-per-s", str(TOKENS_PER_S)), agent_port, ctx.load_core))
    relays: dict[str, Relay] = {}
    timeout_s = p.chat_tokens / TOKENS_PER_S + 30
    try:
        for name, contender in result.contenders.items():
            async def boot(name: str = name, contender: Any = contender) -> None:
                relay = await _start(name, ctx, agent)
                relays[name] = relay
                turns = await concurrent_turns(relay.port, PATH, relay.headers, 1, timeout_s)
                stats = _turn_stats(turns, p.chat_tokens)
                contender.check = stats
                if stats["complete"] != 1:
                    raise Unavailable(f"probe turn: status {stats['statuses']}, ended "
                                      f"{stats['endings']}, {stats['tokens']} tokens")
            await guarded(contender, boot)
        names = list(RELAYS)
        for rnd in range(p.chat_rounds):
            for level in p.chat_levels:
                # One turn at a time gives one TTFT sample: take several, interleaving the
                # relays turn by turn, so a drift in the machine's speed within the round
                # hits every relay alike instead of one relay's block of turns.
                repeats = p.chat_single_turns if level == 1 else 1
                await _round(result, relays, turn_orders(names, rnd, repeats), level, rnd,
                             timeout_s, p.chat_tokens)
    finally:
        for relay in relays.values():
            relay.stop()
        agent.stop()
    _summarise(result, p.chat_levels, p.chat_tokens)
    return result


def turn_orders(names: list[str], rnd: int, repeats: int) -> list[list[str]]:
    """The relays' order in each of a round's ``repeats``: balanced by predecessor.

    A relay's turn is slower right after another relay's turn than after the direct path's
    (the other process has just filled the shared core's caches; measured at bench pace:
    +0.2 to +0.55 ms). A fixed cyclic order (direct, naive, gateway, direct, ...; rotating
    the start does not change it) always put the gateway after the naive relay. So the
    direction alternates: direct, naive, gateway, then direct, gateway, naive; each relay
    follows each other path equally often over an even number of repeats.
    """
    first = names[rnd % len(names):] + names[:rnd % len(names)]
    back = first[:1] + first[:0:-1]
    return [first if (rnd * repeats + i) % 2 == 0 else back for i in range(repeats)]


async def _round(result: ScenarioResult, relays: dict[str, Relay], orders: list[list[str]],
                 level: int, rnd: int, timeout_s: float, tokens: int) -> None:
    """One pass per order in ``orders`` of ``level`` concurrent turns per relay."""
    live = [name for name in orders[0] if name in relays and result.contenders[name].ok]
    own0: dict[str, list[float]] = {}
    cpu0: dict[str, float] = {}
    turns: dict[str, list[Turn]] = {name: [] for name in live}
    for name in live:
        relay = relays[name]

        async def start(relay: Relay = relay, name: str = name) -> None:
            if name == "gw-chat":
                own0[name] = await _own_ttft(relay)
            cpu0[name] = relay.server.cpu() if relay.server else 0.0
        await guarded(result.contenders[name], start)
    for order in orders:
        for name in (name for name in order if name in live):
            async def turn(relay: Relay = relays[name], name: str = name) -> None:
                turns[name] += await concurrent_turns(relay.port, PATH, relay.headers,
                                                      level, timeout_s)
            await guarded(result.contenders[name], turn)
    for name in live:
        relay = relays[name]

        async def finish(relay: Relay = relay, name: str = name) -> None:
            cpu = (relay.server.cpu() - cpu0[name]) if relay.server else None
            stats = _turn_stats(turns[name], tokens)
            if name in own0:
                stats.update(_own_means(own0[name], await _own_ttft(relay)))
            stats.update({"round": rnd, "level": level, "cpu_s": cpu,
                          "cpu_us_per_token": cpu / stats["tokens"] * 1e6
                          if cpu is not None and stats["tokens"] else None})
            result.contenders[name].runs.append(stats)
            log(f"{name} x{level}: ttft p50 {stats['ttft_p50_s'] * 1e3:.1f} ms, "
                f"gap p99 {stats['gap_p99_s'] * 1e3:.1f} ms, "
                f"{stats['complete']}/{stats['turns']} complete")
        await guarded(result.contenders[name], finish)


def _added(result: ScenarioResult, name: str, level: int, key: str) -> list[float]:
    """Per round: this relay's figure minus the direct path's, same round and level."""
    direct = {r["round"]: r[key] for r in result.contenders["agent-direct"].runs
              if r["level"] == level}
    return [r[key] - direct[r["round"]] for r in result.contenders[name].runs
            if r["level"] == level and r["round"] in direct]


def _summarise(result: ScenarioResult, levels: tuple[int, ...], tokens: int) -> None:
    for c in result.contenders.values():
        per: dict[str, Any] = {}
        for level in levels:
            runs = [r for r in c.runs if r["level"] == level]
            if not runs:
                continue
            per[str(level)] = {
                "ttft_p50_s": summary(r["ttft_p50_s"] for r in runs),
                "ttft_p99_s": summary(r["ttft_p99_s"] for r in runs),
                "gap_p99_s": summary(r["gap_p99_s"] for r in runs),
                "cpu_us_per_token": summary(r["cpu_us_per_token"] for r in runs),
                "added_ttft_p50_s": summary(_added(result, c.name, level, "ttft_p50_s")),
                "added_ttft_p99_s": summary(_added(result, c.name, level, "ttft_p99_s")),
                "added_gap_p99_s": summary(_added(result, c.name, level, "gap_p99_s")),
                "complete": sum(r["complete"] for r in runs),
                "turns": sum(r["turns"] for r in runs),
                "gw_own_ttft_mean_s": summary(r.get("gw_own_ttft_mean_s") for r in runs),
            }
        c.summary = {"levels": per}
        if c.ok and c.runs:
            c.status = "ok"
            c.correct = all(r["complete"] == r["turns"] for r in c.runs)
            if not c.correct:
                c.reason = "some turns did not end with all tokens and a done event"
    gw = result.contenders["gw-chat"].summary.get("levels", {})
    low, high = str(min(levels)), str(max(levels))

    def med(level: str, key: str) -> float | None:
        value = gw.get(level, {}).get(key, {}).get("median")
        return None if value is None else float(value)

    ttft = med(low, "added_ttft_p50_s")
    cpu = med(high, "cpu_us_per_token")
    gap = med(high, "added_gap_p99_s")
    result.targets = [
        target(f"gateway added TTFT p50 ({low} turn)", "<= 1 ms",
               None if ttft is None else ttft * 1e3, None if ttft is None else ttft <= 0.001,
               "ms"),
        target(f"gateway CPU per relayed token ({high} turns)", "<= 60 us", cpu,
               None if cpu is None else cpu <= 60, "us"),
        target(f"gateway added gap p99 at {high} concurrent turns", "<= 20 ms",
               None if gap is None else gap * 1e3, None if gap is None else gap <= 0.020,
               "ms"),
    ]
