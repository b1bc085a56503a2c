"""Refuse bodies over MAX_BODY_BYTES before reading them, declared or chunked.

A declared Content-Length over the limit is refused here at once. Chunked bodies are
bounded where they are read: ``client_max_size`` for handlers that read whole bodies, and
the proxy's own counting for streamed uploads.
"""

from __future__ import annotations

from collections.abc import Awaitable

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import PayloadTooLarge
from ..settings import SETTINGS


@web.middleware
def body_limit(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
    """413 PAYLOAD_TOO_LARGE for a declared length over the global limit."""
    length = request.content_length
    if length is not None:
        limit = request.app[SETTINGS].max_body_bytes
        if length > limit:
            raise PayloadTooLarge(details={"max_bytes": limit})
    # A plain function handing back the handler's awaitable: no frame of ours stays
    # alive for the life of a stream.
    return handler(request)
