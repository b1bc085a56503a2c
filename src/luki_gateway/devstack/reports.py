"""The reference reports service: ``POST /v1/reports/generate``, ``GET /v1/reports/{id}``."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .common import caller, error, health_handler, json_object, text_field

KINDS = ("weekly", "monthly", "summary")


@dataclass(slots=True)
class ReportStore:
    """Generated reports by id."""

    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


REPORT_STORE = web.AppKey("report_store", ReportStore)


async def generate(request: web.Request) -> web.Response:
    """POST /v1/reports/generate {user_id?, kind?, period?} -> 201 the report."""
    body = await json_object(request)
    user = caller(request, text_field(body, "user_id", required=False))
    kind = body.get("kind", "weekly")
    if kind not in KINDS:
        raise error(422, "VALIDATION_ERROR", f"kind must be one of {', '.join(KINDS)}",
                    {"field": "kind"})
    period = text_field(body, "period", required=False, max_len=64) or "last-7-days"
    store = request.app[REPORT_STORE]
    report = {
        "report_id": f"rep_{next(store.ids):06d}", "user_id": user, "kind": kind,
        "period": period, "generated_at": time.time(),
        "sections": [
            {"title": "Activities", "text": f"{user} completed 4 suggested activities."},
            {"title": "Mood", "text": "Mostly calm, brighter after social activities."},
            {"title": "Memories", "text": "3 new memories were saved this period."},
        ],
    }
    store.reports[report["report_id"]] = report
    return web.json_response(report, status=201)


async def get_report(request: web.Request) -> web.Response:
    """GET /v1/reports/{report_id}."""
    report = request.app[REPORT_STORE].reports.get(request.match_info["report_id"])
    if report is None:
        raise error(404, "NOT_FOUND", "no such report")
    return web.json_response(report)


def create_reports_app() -> web.Application:
    """The reference reports service."""
    app = web.Application()
    app[REPORT_STORE] = ReportStore()
    app.router.add_post("/v1/reports/generate", generate)
    app.router.add_get("/v1/reports/{report_id}", get_report)
    app.router.add_get("/health", health_handler("reports"))
    return app
