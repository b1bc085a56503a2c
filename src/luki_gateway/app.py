"""create_app(): the whole gateway, read top to bottom.

Settings -> shared state -> resources (cleanup contexts, opened in order, closed in
reverse) -> middlewares (order fixed in middlewares/__init__) -> routes -> hooks.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from .auth.api_keys import key_store_ctx
from .auth.jwt import jwks_ctx
from .cors import setup_cors
from .headers import ResponseHeaders
from .hub.hub import hub_ctx
from .hub.turns import turns_ctx
from .lifecycle import LIFECYCLE, Lifecycle, mark_draining, mark_ready
from .metrics import HTTP_METRICS, REGISTRY, HttpMetrics
from .middlewares import setup_middlewares
from .ratelimit.leases import leases_ctx
from .ratelimit.limiter import limiter_ctx
from .ratelimit.quotas import quotas_ctx
from .redis_client import redis_ctx
from .routes import auth, chat, demo, docs, events, health, metrics, proxy, stats, usage, ws
from .routes.access import ROUTE_ACCESS
from .routes.ws_protocol import WS_MESSAGE_HANDLERS
from .settings import SETTINGS, Settings
from .upstream.sessions import upstream_sessions_ctx


def create_app(settings: Settings, *, registry: CollectorRegistry | None = None) -> web.Application:
    """Build one gateway application from validated settings."""
    # Header lines up to 16 KiB and request lines up to 64 KiB reach our middlewares, so an
    # over-long token (auth refuses above max_token_bytes, 8 KiB) gets the JSON 401 and a
    # long GET (an EventSource URL with a 32k-char message) the JSON 400 that says to POST
    # it, instead of aiohttp's plain-text 400 that echoes the request line.
    app = web.Application(client_max_size=settings.max_body_bytes,
                          handler_args={"max_field_size": 16384, "max_line_size": 65536})

    # Shared state, typed keys only.
    app[SETTINGS] = settings
    app[LIFECYCLE] = Lifecycle()
    app[REGISTRY] = registry if registry is not None else CollectorRegistry(auto_describe=True)
    app[HTTP_METRICS] = HttpMetrics.create(app[REGISTRY])
    app[ROUTE_ACCESS] = {}
    app[WS_MESSAGE_HANDLERS] = {}

    # Resources: one cleanup context each, opened top to bottom, closed bottom to top.
    app.cleanup_ctx.extend([
        redis_ctx,              # REDIS, when REDIS_URL is set (else in-memory twins)
        upstream_sessions_ctx,  # one persistent ClientSession per upstream
        key_store_ctx,          # API keys: file store or Redis store
        jwks_ctx,               # JWT keys: secret, PEM or JWKS with its refresh cache
        limiter_ctx,            # rate limiter: memory or Redis (Lua) backend
        leases_ctx,             # concurrent-stream leases
        quotas_ctx,             # daily output-token quota
        hub_ctx,                # streaming hub: broker, history, subscribers
        turns_ctx,              # resumable chat turns
    ])

    setup_middlewares(app)

    # Routes: public first, then the API surface.
    health.setup(app)       # /healthz /live /ready /health
    metrics.setup(app)      # /metrics
    docs.setup(app)         # /openapi.json /docs (built at start-up from every route)
    demo.setup(app)         # / the demo chat page and /demo/{name} assets
    auth.setup(app)         # /v1/auth/ticket
    usage.setup(app)        # /v1/usage /v1/me
    chat.setup(app)         # /v1/chat /v1/chat/stream
    events.setup(app)       # /v1/events /v1/events/publish
    ws.setup(app)           # /v1/ws
    stats.setup(app)        # /v1/stats
    proxy.setup(app)        # /v1/elr/* /v1/activities/* ... from the route table (last)
    cors = setup_cors(app)  # CORS on every route above; its response hook comes back

    # One response hook: security, trace, rate-limit and (cross-origin only) CORS headers.
    app.on_response_prepare.append(ResponseHeaders(app, cors))
    app.on_startup.append(mark_ready)
    app.on_shutdown.insert(0, mark_draining)
    return app
