"""Scenario 5: what rate limiting costs: Redis limits on vs off, memory vs Redis backend.

All three are the full stack (auth + metrics + request id); the limit is set far above the
load, so every request is allowed and only the limiter's own cost shows. Backend errors
(``luki_ratelimit_backend_errors_total``) and 429s during the saturated runs must be 0.
"""

from __future__ import annotations

from typing import Any

from ..context import Context
from ..gateway import scrape_metric
from ..record import ScenarioResult, target
from ..stats import ratio
from .proxy import Target, run_contenders, summarise

BACKEND_ERRORS = "luki_ratelimit_backend_errors_total"
LABELS = {
    "gw-full-nolimit": "full stack, Redis configured, limits off",
    "gw-full": "full stack, Redis rate limit on",
    "gw-full-memory": "full stack, in-memory rate limit on (no Redis)",
}


async def _errors(name: str, t: Target, run: dict[str, Any]) -> None:
    """Backend errors counted by the gateway so far (cumulative; deltas taken later)."""
    run["backend_errors_total"] = await scrape_metric(t.server.port, BACKEND_ERRORS)


async def run(ctx: Context) -> ScenarioResult:
    """Scenario 5."""
    p = ctx.profile
    result = ScenarioResult("ratelimit", "Rate-limit overhead", p.name)
    result.params.update({"connections": p.proxy_connections,
                          "duration_s": p.ratelimit_duration_s, "rounds": p.rounds,
                          "limit_per_min": "1e9 (never reached)"})
    await run_contenders(ctx, result, list(LABELS), LABELS, with_open_loop=False,
                         duration_s=p.ratelimit_duration_s, extra=_errors)
    summarise(result)
    for c in result.contenders.values():
        totals = [r.get("backend_errors_total", 0.0) for r in c.runs]
        c.summary["backend_errors"] = max(totals, default=0.0)
        c.summary["non_2xx"] = sum(r["non_2xx"] for r in c.runs)

    def rps(name: str) -> float | None:
        c = result.contenders.get(name)
        if c is None or c.status != "ok":
            return None
        value = c.summary["rps"]["median"]
        return None if value is None else float(value)

    on, off, mem = rps("gw-full"), rps("gw-full-nolimit"), rps("gw-full-memory")
    keep = ratio(on, off)
    errors = result.contenders["gw-full"].summary.get("backend_errors")
    rejected = result.contenders["gw-full"].summary.get("non_2xx")
    result.targets = [
        target("req/s with Redis limits on vs off", ">= 0.75x (costs <= 25%)", keep,
               None if keep is None else keep >= 0.75, "x"),
        target("Redis backend vs memory backend req/s", "(no target)", ratio(on, mem),
               None, "x"),
        target("limiter backend errors during saturated runs (Redis healthy)", "0", errors,
               None if errors is None or on is None else errors == 0 and rejected == 0, ""),
    ]
    return result
