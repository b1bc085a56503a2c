"""What a chat turn asks of the rate-limit side: a stream lease and the token quota.

The leases and the quota live in ``ratelimit/``; a turn acquires a lease and checks the
quota before it starts, and releases the lease and charges its output tokens when it ends
(abandoned turns included: what was streamed is paid for). When an app has neither
(limits switched off), turns run unlimited.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import structlog
from aiohttp import web

from ..auth.principal import Principal

log = structlog.get_logger("luki.chat")


def _app_key(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(f"luki_gateway.ratelimit.{module}"), name, None)
    except ImportError:
        return None


async def _settle(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class TurnAllowance:
    """The lease one turn holds and the quota it is charged to."""

    __slots__ = ("_lease", "_principal", "_quota")

    def __init__(self, principal: Principal, lease: Any, quota: Any) -> None:
        self._principal = principal
        self._lease = lease
        self._quota = quota

    @classmethod
    async def acquire(cls, app: web.Application, principal: Principal) -> TurnAllowance:
        """Check the token quota and take a stream lease (raises RateLimitExceeded)."""
        quota_key = _app_key("quota", "TOKEN_QUOTA") or _app_key("quotas", "TOKEN_QUOTA")
        leases_key = _app_key("leases", "LEASES")
        quota = app[quota_key] if quota_key is not None and quota_key in app else None
        if quota is not None:
            await _settle(quota.check(principal))
        lease = None
        if leases_key is not None and leases_key in app:
            lease = await _settle(app[leases_key].acquire(principal, "chat"))
        return cls(principal, lease, quota)

    async def settle(self, output_tokens: int) -> None:
        """Release the lease and charge ``output_tokens``; never raises."""
        lease, self._lease = self._lease, None
        try:
            if lease is not None:
                await _settle(lease.release())
            if self._quota is not None and output_tokens > 0:
                await _settle(self._quota.charge(self._principal, output_tokens))
        except Exception as exc:
            # Limits fail open at the end of a turn; the answer was already delivered.
            log.warning("turn settlement failed", error=type(exc).__name__)
