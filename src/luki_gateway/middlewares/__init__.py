"""The middleware chain. Its order is fixed here, and only here."""

from __future__ import annotations

from aiohttp import web

from .access import access
from .auth import authenticate
from .body_limit import body_limit
from .errors import errors
from .ratelimit import rate_limit
from .request_context import request_context


def setup_middlewares(app: web.Application) -> None:
    """Install the chain, outermost first."""
    app.middlewares.extend([
        # Trace ids first, so every log line and error body below carries them.
        request_context,
        # Access log + metrics see the final status, error responses included.
        access,
        # Turns every exception below into the JSON error shape.
        errors,
        # Cheapest refusal: a declared body over the limit, before any auth work.
        body_limit,
        # Who is calling, and may they use this route with this method.
        authenticate,
        # Charged only for authenticated, authorised requests (per principal).
        rate_limit,
    ])
