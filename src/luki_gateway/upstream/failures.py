"""What a failed upstream exchange means: its metric kind and the client's error."""

from __future__ import annotations

import aiohttp

from ..errors import DownstreamError, DownstreamTimeout, DownstreamUnavailable, GatewayError
from .http1 import ConnectFailed, UpstreamClosed


def classify(exc: BaseException) -> tuple[str, GatewayError, bool]:
    """(``luki_upstream_errors_total`` kind, error for the client, retryable) for a failure
    before the upstream's answer: not reached (503), too slow (504), hung up or answered
    with something that is not HTTP (502)."""
    if isinstance(exc, TimeoutError):
        # connect timeouts included: the request may still have been accepted upstream
        return "timeout", DownstreamTimeout(), False
    if isinstance(exc, ConnectFailed | aiohttp.ClientConnectorError):
        return "connect", DownstreamUnavailable(), True
    if isinstance(exc, UpstreamClosed | aiohttp.ServerDisconnectedError | aiohttp.ClientOSError
                  | aiohttp.ClientPayloadError | OSError):
        # A stale keep-alive connection closed under us is the classic retryable case.
        return "reset", DownstreamError("upstream closed the connection"), True
    return "bad_response", DownstreamError("upstream answered with something that is not "
                                           "HTTP"), False
