"""GET /openapi.json and /docs describe every route the app serves, including added ones."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from aiohttp import web
from openapi_spec_validator import validate

from luki_gateway.app import create_app
from luki_gateway.routes.access import PUBLIC, RouteAccess, declare
from luki_gateway.settings import Settings


async def widget(request: web.Request) -> web.Response:
    """Make a widget (a route another part might add)."""
    return web.Response(text="ok")


async def test_openapi_lists_the_whole_surface(gateway: Callable[..., Any]) -> None:
    """Every route of the app is in the document with its auth; shapes come from the table."""
    client = await gateway()
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    spec = await resp.json()
    assert spec["openapi"].startswith("3.1")
    served = {(re.sub(r"\{(\w+):[^}]*\}", r"{\1}", r.resource.canonical), r.method)
              for r in client.server.app.router.routes()
              if r.resource is not None and r.method not in ("HEAD", "OPTIONS")}
    listed = {(path, method.upper()) for path, item in spec["paths"].items() for method in item}
    assert served == listed
    assert ("/v1/elr/{tail}", "GET") in listed  # proxied prefixes from the route table
    assert "memory" in spec["paths"]["/v1/elr/{tail}"]["get"]["summary"]
    for path in ("/healthz", "/ready", "/metrics", "/openapi.json", "/docs"):
        assert spec["paths"][path]["get"]["security"] == []
    assert spec["paths"]["/ready"]["get"]["responses"]["503"]
    error = spec["components"]["schemas"]["Error"]["properties"]["error"]
    assert "PAYLOAD_TOO_LARGE" in error["properties"]["code"]["enum"]
    validate(spec)  # a valid OpenAPI 3.1 document


async def test_routes_added_by_other_parts_appear(serve_app: Callable[..., Any],
                                                  make_settings: Callable[..., Settings]
                                                  ) -> None:
    """A route declared with scopes, or with a path variable, is described from its declaration."""
    app = create_app(make_settings())
    declare(app, app.router.add_post("/v1/widgets/{widget_id}", widget),
            RouteAccess(scopes={"POST": ("widgets:write",)}, cost=3, ticket=True))
    declare(app, app.router.add_get("/v1/open", widget), PUBLIC)
    client = await serve_app(app)
    spec = await (await client.get("/openapi.json")).json()
    op = spec["paths"]["/v1/widgets/{widget_id}"]["post"]
    assert op["summary"] == "Make a widget (a route another part might add)."
    assert op["x-scopes"] == ["widgets:write"]
    assert {"bearer": []} in op["security"] and {"ticket": []} in op["security"]
    assert "Cost: 3" in op["description"]
    assert op["parameters"][0] == {"name": "widget_id", "in": "path", "required": True,
                                   "schema": {"type": "string"}}
    assert set(op["responses"]) >= {"401", "403", "429", "default"}
    assert spec["paths"]["/v1/open"]["get"]["security"] == []
    validate(spec)


async def test_docs_page_is_html_without_scripts(serve_app: Callable[..., Any],
                                                 make_settings: Callable[..., Settings]) -> None:
    """/docs lists every operation in plain HTML (CSP on, no script, names escaped)."""
    app = create_app(make_settings())
    declare(app, app.router.add_get("/v1/<b>odd</b>", widget), PUBLIC)
    client = await serve_app(app)
    spec = await (await client.get("/openapi.json")).json()
    resp = await client.get("/docs")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert "Content-Security-Policy" in resp.headers
    html = await resp.text()
    assert "<script" not in html
    assert "<b>odd</b>" not in html and "&lt;b&gt;odd&lt;/b&gt;" in html
    operations = sum(len(item) for item in spec["paths"].values())
    assert html.count("<tr><td") == operations
    assert 'href="/openapi.json"' in html
