"""The reference memory service (ELR items), what ``MEMORY_URL`` speaks in development.

``POST /v1/elr/ingest_text``, ``GET /v1/elr/items`` (paged, per user), ``GET`` and
``DELETE /v1/elr/items/{item_id}``, ``POST /v1/elr/search`` (or ``GET ?q=``) ranked by
word overlap, ``GET /health``. Items live in memory, per app; the user is the body's
``user_id`` or, behind the gateway, ``X-LUKi-Principal``.
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .common import caller, error, health_handler, int_param, json_object, text_field

_WORD = re.compile(r"\w+")


@dataclass(slots=True)
class ElrItem:
    """One stored memory."""

    item_id: str
    user_id: str
    text: str
    tags: tuple[str, ...]
    created_at: float

    def as_json(self) -> dict[str, Any]:
        """The item as the API returns it."""
        return {"item_id": self.item_id, "user_id": self.user_id, "text": self.text,
                "tags": list(self.tags), "created_at": self.created_at}


@dataclass(slots=True)
class ElrStore:
    """All items of this app, in insertion order."""

    items: dict[str, ElrItem] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, user_id: str, text: str, tags: tuple[str, ...]) -> ElrItem:
        """Store a new item and return it."""
        item = ElrItem(f"elr_{next(self.ids):06d}", user_id, text, tags, time.time())
        self.items[item.item_id] = item
        return item

    def of_user(self, user_id: str) -> list[ElrItem]:
        """The user's items, newest first."""
        return [i for i in reversed(self.items.values()) if i.user_id == user_id]


ELR_STORE = web.AppKey("elr_store", ElrStore)


def _tags(body: dict[str, Any]) -> tuple[str, ...]:
    tags = body.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise error(422, "VALIDATION_ERROR", "tags must be a list of strings", {"field": "tags"})
    return tuple(tags)


async def ingest_text(request: web.Request) -> web.Response:
    """POST /v1/elr/ingest_text {user_id?, text, tags?} -> 201 the stored item."""
    body = await json_object(request)
    text = text_field(body, "text")
    assert text is not None
    user = caller(request, text_field(body, "user_id", required=False))
    item = request.app[ELR_STORE].add(user, text, _tags(body))
    return web.json_response(item.as_json(), status=201)


async def list_items(request: web.Request) -> web.Response:
    """GET /v1/elr/items?user_id&limit&offset -> {items, total}."""
    user = caller(request, request.query.get("user_id"))
    limit = int_param(request.query.get("limit"), "limit", default=20, low=1, high=100)
    offset = int_param(request.query.get("offset"), "offset", default=0, low=0, high=10**9)
    items = request.app[ELR_STORE].of_user(user)
    return web.json_response({"items": [i.as_json() for i in items[offset:offset + limit]],
                              "total": len(items)})


def _owned_item(request: web.Request) -> ElrItem:
    item = request.app[ELR_STORE].items.get(request.match_info["item_id"])
    principal = request.headers.get("X-LUKi-Principal")
    if item is None or (principal and item.user_id != principal):
        raise error(404, "NOT_FOUND", "no such item")
    return item


async def get_item(request: web.Request) -> web.Response:
    """GET /v1/elr/items/{item_id}."""
    return web.json_response(_owned_item(request).as_json())


async def delete_item(request: web.Request) -> web.Response:
    """DELETE /v1/elr/items/{item_id} -> 204."""
    item = _owned_item(request)
    del request.app[ELR_STORE].items[item.item_id]
    return web.Response(status=204)


def _search(store: ElrStore, user: str, query: str, k: int) -> list[dict[str, Any]]:
    wanted = {w.lower() for w in _WORD.findall(query)}
    scored = []
    for item in store.of_user(user):
        words = {w.lower() for w in _WORD.findall(item.text)}
        overlap = len(wanted & words)
        if overlap:
            scored.append((overlap / len(wanted), item))
    scored.sort(key=lambda pair: pair[0], reverse=True)
    return [{"item": item.as_json(), "score": round(score, 3)} for score, item in scored[:k]]


async def search(request: web.Request) -> web.Response:
    """POST /v1/elr/search {user_id?, query, k?} or GET ?q&k -> {results}."""
    if request.method == "POST":
        body = await json_object(request)
        query = text_field(body, "query", max_len=1000)
        user = caller(request, text_field(body, "user_id", required=False))
        raw_k = body.get("k", 5)
        if not isinstance(raw_k, int) or isinstance(raw_k, bool) or not 1 <= raw_k <= 50:
            raise error(422, "VALIDATION_ERROR", "k must be an integer between 1 and 50",
                        {"field": "k"})
        k = raw_k
    else:
        query = request.query.get("q", "")
        if not query.strip():
            raise error(422, "VALIDATION_ERROR", "q is required", {"field": "q"})
        user = caller(request, request.query.get("user_id"))
        k = int_param(request.query.get("k"), "k", default=5, low=1, high=50)
    assert query is not None
    return web.json_response({"results": _search(request.app[ELR_STORE], user, query, k)})


def create_memory_app() -> web.Application:
    """The reference memory service with an empty store."""
    app = web.Application(client_max_size=1 << 20)
    app[ELR_STORE] = ElrStore()
    app.router.add_post("/v1/elr/ingest_text", ingest_text)
    app.router.add_get("/v1/elr/items", list_items)
    app.router.add_get("/v1/elr/items/{item_id}", get_item)
    app.router.add_delete("/v1/elr/items/{item_id}", delete_item)
    app.router.add_post("/v1/elr/search", search)
    app.router.add_get("/v1/elr/search", search)
    app.router.add_get("/health", health_handler("memory"))
    return app
