"""The reference engagement service: ``GET /v1/activities/recommend?user_id&k``, ``/health``.

Recommendations come from a fixed catalogue in an order derived from the user id, so the
same user gets the same list (handy in tests) and different users get different ones.
"""

from __future__ import annotations

import hashlib

from aiohttp import web

from .common import caller, health_handler, int_param

CATALOGUE: tuple[tuple[str, str, str], ...] = (
    ("act_walk", "Short walk outside", "movement"),
    ("act_call", "Call a friend or relative", "social"),
    ("act_music", "Listen to a favourite album", "leisure"),
    ("act_garden", "Water the plants", "home"),
    ("act_photos", "Look through old photos", "reminiscence"),
    ("act_puzzle", "Crossword or puzzle", "cognitive"),
    ("act_stretch", "Gentle stretching", "movement"),
    ("act_cook", "Cook a simple recipe", "home"),
    ("act_read", "Read a chapter of a book", "leisure"),
    ("act_journal", "Write three lines in a journal", "reflection"),
    ("act_breathe", "Five minutes of slow breathing", "wellbeing"),
    ("act_draw", "Sketch something nearby", "creative"),
)


def _score(user_id: str, activity_id: str) -> float:
    digest = hashlib.sha256(f"{user_id}:{activity_id}".encode()).digest()
    return round(int.from_bytes(digest[:4], "big") / 2**32, 3)


async def recommend(request: web.Request) -> web.Response:
    """GET /v1/activities/recommend?user_id&k -> {user_id, recommendations}."""
    user = caller(request, request.query.get("user_id"))
    k = int_param(request.query.get("k"), "k", default=3, low=1, high=len(CATALOGUE))
    ranked = sorted(CATALOGUE, key=lambda a: _score(user, a[0]), reverse=True)[:k]
    return web.json_response({"user_id": user, "recommendations": [
        {"id": a, "title": title, "category": category, "score": _score(user, a)}
        for a, title, category in ranked]})


def create_engagement_app() -> web.Application:
    """The reference engagement (activities) service."""
    app = web.Application()
    app.router.add_get("/v1/activities/recommend", recommend)
    app.router.add_get("/health", health_handler("engagement"))
    return app
