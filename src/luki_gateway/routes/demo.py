"""The demo chat page at ``/`` and its assets (plain HTML, CSS, JavaScript and an icon).

The files are read once at start-up and served from memory; the page is CSP-clean (no
inline script), so the security headers' ``Content-Security-Policy`` applies unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from ..errors import NotFound
from .access import PUBLIC, declare

_ASSETS = {
    "demo.js": "text/javascript; charset=utf-8",
    "demo.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class DemoFiles:
    """The page and its assets, as bytes with their content types."""

    page: bytes
    assets: dict[str, tuple[bytes, str]]


DEMO_FILES = web.AppKey("demo_files", DemoFiles)


def load_files() -> DemoFiles:
    """Read the packaged static files."""
    static = resources.files("luki_gateway").joinpath("static")
    return DemoFiles(
        page=static.joinpath("index.html").read_bytes(),
        assets={name: (static.joinpath(name).read_bytes(), ctype)
                for name, ctype in _ASSETS.items()},
    )


async def page(request: web.Request) -> web.Response:
    """GET /: the demo chat page."""
    return web.Response(body=request.app[DEMO_FILES].page,
                        headers={"Content-Type": "text/html; charset=utf-8",
                                 "Cache-Control": "no-cache"})


async def asset(request: web.Request) -> web.Response:
    """GET /demo/{name}: the page's script, stylesheet and icon."""
    found = request.app[DEMO_FILES].assets.get(request.match_info["name"])
    if found is None:
        raise NotFound()
    body, ctype = found
    return web.Response(body=body, headers={"Content-Type": ctype,
                                            "Cache-Control": "no-cache"})


def setup(app: web.Application) -> None:
    """Add the routes: GET / and GET /demo/{name}."""
    app[DEMO_FILES] = load_files()
    declare(app, app.router.add_get("/", page), PUBLIC)
    declare(app, app.router.add_get("/demo/{name}", asset), PUBLIC)
