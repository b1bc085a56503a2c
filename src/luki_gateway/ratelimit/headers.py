"""Rate-limit response headers: IETF httpapi draft fields plus the X-RateLimit-* trio.

Set from the gateway's ``on_response_prepare`` hook (headers.ResponseHeaders) so streamed
responses (SSE) and error responses get them too: the middleware only records the decision
on the request.
"""

from __future__ import annotations

from aiohttp import web

from .decision import Decision, WindowState

RATE_DECISION = web.RequestKey("rate_decision", Decision)


def policy_header(decision: Decision) -> str:
    """``RateLimit-Policy``: every window, e.g. ``"minute";q=60;w=60, "hour";q=1000;w=3600``."""
    return ", ".join([s.window.policy_item for s in decision.states])


def _item(state: WindowState) -> str:
    return f'"{state.window.policy}";r={state.remaining};t={state.reset_header}'


def ratelimit_header(decision: Decision, tightest: WindowState | None = None) -> str:
    """``RateLimit``: remaining and reset per window, the tightest first."""
    if tightest is None:
        tightest = decision.tightest
    items = [_item(s) for s in decision.states if s is not tightest]
    if tightest is not None:
        items.insert(0, _item(tightest))
    return ", ".join(items)


def decision_headers(decision: Decision) -> dict[str, str]:
    """All rate-limit headers for ``decision`` (empty when no window applied)."""
    tightest = decision.tightest
    if tightest is None:
        return {}
    return {
        "RateLimit-Policy": policy_header(decision),
        "RateLimit": ratelimit_header(decision, tightest),
        "X-RateLimit-Limit": str(tightest.window.limit),
        "X-RateLimit-Remaining": str(tightest.remaining),
        "X-RateLimit-Reset": str(tightest.reset_header),
    }

