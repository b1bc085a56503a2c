"""Rate-limit response headers: IETF httpapi draft fields plus the X-RateLimit-* trio.

Set from the gateway's ``on_response_prepare`` hook (headers.ResponseHeaders) so streamed
responses (SSE) and error responses get them too: the middleware only records the decision
on the request.
"""

from __future__ import annotations

from aiohttp import web

from .decision import Decision

RATE_DECISION = web.RequestKey("rate_decision", Decision)


def policy_header(decision: Decision) -> str:
    """``RateLimit-Policy``: every window, e.g. ``"minute";q=60;w=60, "hour";q=1000;w=3600``."""
    return ", ".join(f'"{s.window.policy}";q={s.window.limit};w={int(s.window.window_s)}'
                     for s in decision.states)


def ratelimit_header(decision: Decision) -> str:
    """``RateLimit``: remaining and reset per window, the tightest first."""
    tightest = decision.tightest
    ordered = sorted(decision.states, key=lambda s: s is not tightest)
    return ", ".join(f'"{s.window.policy}";r={s.remaining};t={s.reset_header}'
                     for s in ordered)


def decision_headers(decision: Decision) -> dict[str, str]:
    """All rate-limit headers for ``decision`` (empty when no window applied)."""
    tightest = decision.tightest
    if tightest is None:
        return {}
    return {
        "RateLimit-Policy": policy_header(decision),
        "RateLimit": ratelimit_header(decision),
        "X-RateLimit-Limit": str(tightest.window.limit),
        "X-RateLimit-Remaining": str(tightest.remaining),
        "X-RateLimit-Reset": str(tightest.reset_header),
    }

