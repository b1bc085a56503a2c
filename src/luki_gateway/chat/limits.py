"""What a chat turn asks of the rate-limit side: a stream lease and the token quota.

A turn checks the daily output-token quota and takes a ``chat`` stream lease before it
starts, and releases the lease and charges its output tokens when it ends (abandoned
turns included: what was streamed is paid for).
"""

from __future__ import annotations

import structlog
from aiohttp import web

from ..auth.principal import Principal
from ..ratelimit.leases import LEASES, Lease
from ..ratelimit.quotas import TOKEN_QUOTA, TokenQuota

log = structlog.get_logger("luki.chat")


class TurnAllowance:
    """The lease one turn holds and the quota it is charged to."""

    __slots__ = ("_lease", "_principal", "_quota")

    def __init__(self, principal: Principal, lease: Lease | None,
                 quota: TokenQuota | None) -> None:
        self._principal = principal
        self._lease = lease
        self._quota = quota

    @classmethod
    async def acquire(cls, app: web.Application, principal: Principal) -> TurnAllowance:
        """Check the token quota and take a stream lease (raises RateLimitExceeded)."""
        quota = app.get(TOKEN_QUOTA)
        if quota is not None and quota.enabled:
            await quota.check(principal)
        leases = app.get(LEASES)
        lease = await leases.acquire(principal, "chat") if leases is not None else None
        return cls(principal, lease, quota)

    async def settle(self, output_tokens: int) -> None:
        """Release the lease and charge ``output_tokens``; never raises."""
        lease, self._lease = self._lease, None
        try:
            if lease is not None:
                await lease.release()
            if self._quota is not None:
                await self._quota.charge(self._principal, output_tokens)
        except Exception as exc:
            # The answer was already delivered; a failed settlement must not turn into an error.
            log.warning("turn settlement failed", error=type(exc).__name__)
