"""GET /openapi.json (OpenAPI 3.1 of every route) and GET /docs (an HTML listing of it).

Both are built once at start-up, when every part has added its routes; /docs is plain
HTML with no script and no CDN (the gateway may run with no internet access).
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from aiohttp import web

from ..openapi import build_openapi
from .access import PUBLIC, declare

OPENAPI_JSON = web.AppKey("openapi_json", bytes)
DOCS_HTML = web.AppKey("docs_html", bytes)

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;
color:#1d1d1f}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.35rem .6rem;
border-bottom:1px solid #e3e3e8;vertical-align:top}code{font-size:.92em}
.m{font-weight:600;font-family:monospace}.pub{color:#2a7a2a}.priv{color:#8a4b00}
"""


def render_docs(spec: dict[str, Any]) -> str:
    """The HTML listing of ``spec``: one row per operation."""
    rows = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if op.get("security") == []:
                auth = '<span class="pub">public</span>'
            else:
                scopes = ", ".join(op.get("x-scopes") or []) or "any caller"
                ticket = " or ?ticket=" if {"ticket": []} in op["security"] else ""
                auth = f'<span class="priv">{escape(scopes)}{ticket}</span>'
            rows.append(f'<tr><td class="m">{escape(method.upper())}</td>'
                        f"<td><code>{escape(path)}</code></td><td>{auth}</td>"
                        f"<td>{escape(op.get('summary', ''))}</td></tr>")
    info = spec["info"]
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(info['title'])} API</title><style>{_STYLE}</style></head><body>"
        f"<h1>{escape(info['title'])} <small>{escape(info['version'])}</small></h1>"
        f"<p>{escape(info.get('description', ''))} Machine-readable: "
        '<a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1). Errors always have the shape '
        '<code>{"error": {"code", "message", "trace_id", "details"?}}</code>.</p>'
        "<table><thead><tr><th>method</th><th>path</th><th>auth</th><th>what</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></body></html>"
    )


async def build_docs(app: web.Application) -> None:
    """on_startup: every route is in place now; render both documents once."""
    spec = build_openapi(app)
    app[OPENAPI_JSON] = json.dumps(spec, indent=1).encode()
    app[DOCS_HTML] = render_docs(spec).encode()


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of the gateway."""
    return web.Response(body=request.app[OPENAPI_JSON], content_type="application/json")


async def docs_page(request: web.Request) -> web.Response:
    """A human-readable list of every route, from the OpenAPI document."""
    return web.Response(body=request.app[DOCS_HTML], content_type="text/html", charset="utf-8")


def setup(app: web.Application) -> None:
    """Add GET /openapi.json and GET /docs (public)."""
    app.on_startup.append(build_docs)
    declare(app, app.router.add_get("/openapi.json", openapi_json), PUBLIC)
    declare(app, app.router.add_get("/docs", docs_page), PUBLIC)
