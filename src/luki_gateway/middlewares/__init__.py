"""The middleware chain. Its order is fixed here, and only here.

aiohttp sees one middleware, ``gateway``: a plain function, so no coroutine frame of ours
stays alive while a handler runs (an idle WebSocket or SSE stream keeps only the handler's
own frame and a small ``RequestFlow``). Per request it costs one flow object instead of a
suspended coroutine per middleware.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from ..routes.access import access_of
from .access import begin_access
from .auth import authenticate
from .body_limit import body_limit
from .flow import RequestFlow, Stage
from .ratelimit import rate_limit
from .request_context import request_context

# Run in this order before the handler, inside the access record and the error answer.
STAGES: tuple[Stage, ...] = (
    # Cheapest refusal: a declared body over the limit, before any auth work.
    body_limit,
    # Who is calling, and may they use this route with this method.
    authenticate,
    # Charged only for authenticated, authorised requests (per principal).
    rate_limit,
)


@web.middleware
def gateway(request: web.Request, handler: Handler) -> RequestFlow:
    """The whole chain, outermost first.

    1. request context: trace ids first, so every log line and error body carries them;
    2. access: the log line and metrics see the final status, error answers included;
    3. errors: every exception below becomes the JSON error shape (``errors.py``);
    4. ``STAGES``, then the handler.
    """
    trace = request_context(request)
    started = begin_access(request)
    return RequestFlow(request, handler, STAGES, access_of(request), trace, started)


def setup_middlewares(app: web.Application) -> None:
    """Install the chain."""
    app.middlewares.append(gateway)
