"""The real `luki-gateway` CLI plus one test route, /test/slow, in every worker.

Run as a script by tests/test_serve.py. Spawned workers re-import this file as
``__mp_main__``, so the wrap of ``create_app`` below applies in each worker too.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from luki_gateway import serving
from luki_gateway.cli import main
from luki_gateway.routes.access import PUBLIC, declare
from luki_gateway.settings import Settings

_create_app = serving.create_app


async def slow(request: web.Request) -> web.StreamResponse:
    """Send "started" at once and "finished" after ?ms= milliseconds (an in-flight request)."""
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await resp.prepare(request)
    await resp.write(b"started\n")
    await asyncio.sleep(int(request.query.get("ms", "1000")) / 1000)
    await resp.write(b"finished\n")
    await resp.write_eof()
    return resp


def create_app_with_slow_route(settings: Settings, **kwargs: Any) -> web.Application:
    """The real app plus /test/slow."""
    app = _create_app(settings, **kwargs)
    declare(app, app.router.add_get("/test/slow", slow), PUBLIC)
    return app


serving.create_app = create_app_with_slow_route  # type: ignore[assignment]

if __name__ == "__main__":
    raise SystemExit(main())
