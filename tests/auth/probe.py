"""The real app plus probe routes that record every request reaching a handler.

Used by the auth tests: an attack is refused when the answer is 401 *and* the probe (or the
upstream) saw nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from luki_gateway.app import create_app
from luki_gateway.auth.api_keys import KEY_STORE
from luki_gateway.auth.key_record import KeyEnv, generate_key, new_record
from luki_gateway.auth.principal import PRINCIPAL, Principal
from luki_gateway.routes.access import RouteAccess, declare
from luki_gateway.settings import Settings


def principal_json(principal: Principal | None) -> dict[str, Any] | None:
    """A principal as the probe answers it."""
    if principal is None:
        return None
    return {"id": principal.id, "kind": principal.kind, "subject": principal.subject,
            "scopes": sorted(principal.scopes), "display": principal.display,
            "key_env": principal.key_env, "tenant": principal.tenant,
            "expires_at": principal.expires_at}


@dataclass
class Probe:
    """A running gateway with probe routes, and the paths its handlers saw."""

    client: TestClient[Any, Any]
    app: web.Application
    settings: Settings
    calls: list[str] = field(default_factory=list)

    async def add_key(self, *, owner: str = "alice", scopes: tuple[str, ...] = ("chat:write",),
                      env: KeyEnv = "live", expires_at: float | None = None) -> str:
        """Create an API key in the running app's store; returns the plaintext key."""
        key = generate_key(env)
        await self.app[KEY_STORE].add(new_record(
            key, pepper=self.settings.auth.api_key_pepper, owner=owner, scopes=scopes,
            expires_at=expires_at, now=time.time()))
        return key


async def start_probe(aiohttp_client: Callable[..., Any], settings: Settings) -> Probe:
    """create_app(settings) plus /t/* probe routes, started on a real socket."""
    app = create_app(settings)
    probe_calls: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        probe_calls.append(request.path)
        return web.json_response({"principal": principal_json(request.get(PRINCIPAL))})

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        probe_calls.append(request.path)
        ws = web.WebSocketResponse(protocols=("bearer",))
        await ws.prepare(request)
        await ws.send_json({"principal": principal_json(request.get(PRINCIPAL))})
        await ws.close()
        return ws

    router = app.router
    declare(app, router.add_route("*", "/t/chat", handler),
            RouteAccess(scopes={"GET": ("chat:read",), "*": ("chat:write",)}))
    declare(app, router.add_route("*", "/t/elr", handler),
            RouteAccess(scopes={"GET": ("elr:read",), "*": ("elr:write",)}))
    declare(app, router.add_route("*", "/t/any", handler), RouteAccess())
    declare(app, router.add_get("/t/stream", handler), RouteAccess(ticket=True))
    declare(app, router.add_get("/t/ws", ws_handler), RouteAccess(deferred_auth=True))
    client: TestClient[Any, Any] = await aiohttp_client(app)
    return Probe(client=client, app=app, settings=settings, calls=probe_calls)
