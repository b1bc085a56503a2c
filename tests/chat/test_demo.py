"""The demo page at / : served with CSP, no inline script, assets present."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any


async def test_demo_page_is_served_with_csp(gateway: Callable[..., Any]) -> None:
    """GET / is public HTML with a CSP, and every script is an external file."""
    client = await gateway()
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    html = await resp.text()
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all("src=" in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\son[a-z]+\s*=", html, re.I), "inline event handler"


async def test_demo_assets(gateway: Callable[..., Any]) -> None:
    """The script and stylesheet are served with their types; unknown names are 404 JSON."""
    client = await gateway()
    js = await client.get("/demo/demo.js")
    assert js.status == 200 and js.headers["Content-Type"].startswith("text/javascript")
    assert "new WebSocket" in await js.text()
    css = await client.get("/demo/demo.css")
    assert css.status == 200 and css.headers["Content-Type"].startswith("text/css")
    icon = await client.get("/demo/favicon.svg")
    assert icon.status == 200 and icon.headers["Content-Type"] == "image/svg+xml"
    missing = await client.get("/demo/../settings.py")
    assert missing.status == 404
    missing = await client.get("/demo/secret.txt")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "NOT_FOUND"


async def test_every_file_the_page_names_is_served(gateway: Callable[..., Any]) -> None:
    """Each src/href of the page answers 200, and the page names its own icon (else the
    browser asks for /favicon.ico, a 404 in every visitor's console)."""
    client = await gateway()
    html = await (await client.get("/")).text()
    refs = re.findall(r'(?:src|href)="(/[^"]*)"', html)
    assert "/demo/favicon.svg" in refs
    assert re.search(r'<link rel="icon" href="/demo/favicon.svg"', html)
    for ref in refs:
        resp = await client.get(ref)
        assert resp.status == 200, ref
