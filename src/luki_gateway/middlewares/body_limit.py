"""Refuse bodies over MAX_BODY_BYTES before reading them, declared or chunked.

A declared Content-Length over the limit is refused here at once. Chunked bodies are
bounded where they are read: ``client_max_size`` for handlers that read whole bodies, and
the proxy's own counting for streamed uploads.
"""

from __future__ import annotations

from aiohttp import web

from ..errors import PayloadTooLarge
from ..routes.access import RouteAccess
from ..settings import SETTINGS


def body_limit(request: web.Request, access: RouteAccess) -> None:
    """413 PAYLOAD_TOO_LARGE for a declared length over the global limit."""
    length = request.content_length
    if length is not None:
        limit = request.app[SETTINGS].max_body_bytes
        if length > limit:
            raise PayloadTooLarge(details={"max_bytes": limit})
