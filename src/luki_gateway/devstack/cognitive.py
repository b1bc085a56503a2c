"""The reference cognitive service: ``POST /v1/cognitive/analyze``, ``GET .../exercises``."""

from __future__ import annotations

import re

from aiohttp import web

from .common import health_handler, int_param, json_object, text_field

_WORD = re.compile(r"[A-Za-z']+")
_POSITIVE = frozenset({"good", "great", "happy", "calm", "love", "nice", "glad", "better"})
_NEGATIVE = frozenset({"bad", "sad", "tired", "angry", "lonely", "worse", "pain", "upset"})
_EXERCISES = (
    {"id": "ex_recall", "title": "Recall three things from this morning", "minutes": 3},
    {"id": "ex_words", "title": "Name five animals starting with B", "minutes": 2},
    {"id": "ex_count", "title": "Count back from 50 in sevens", "minutes": 2},
    {"id": "ex_story", "title": "Tell the story of a favourite trip", "minutes": 5},
)


async def analyze(request: web.Request) -> web.Response:
    """POST /v1/cognitive/analyze {text} -> word count, sentiment and keywords."""
    text = text_field(await json_object(request), "text")
    assert text is not None
    words = [w.lower() for w in _WORD.findall(text)]
    score = sum(w in _POSITIVE for w in words) - sum(w in _NEGATIVE for w in words)
    sentiment = "positive" if score > 0 else "negative" if score < 0 else "neutral"
    keywords = sorted({w for w in words if len(w) > 5})[:10]
    return web.json_response({"words": len(words), "sentiment": sentiment,
                              "keywords": keywords})


async def exercises(request: web.Request) -> web.Response:
    """GET /v1/cognitive/exercises?k -> a few short exercises."""
    k = int_param(request.query.get("k"), "k", default=2, low=1, high=len(_EXERCISES))
    return web.json_response({"exercises": list(_EXERCISES[:k])})


def create_cognitive_app() -> web.Application:
    """The reference cognitive service."""
    app = web.Application()
    app.router.add_post("/v1/cognitive/analyze", analyze)
    app.router.add_get("/v1/cognitive/exercises", exercises)
    app.router.add_get("/health", health_handler("cognitive"))
    return app
