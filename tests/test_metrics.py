"""/metrics: the app's own registry, OpenMetrics on request, bounded label cardinality."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from luki_gateway.app import create_app
from luki_gateway.metrics import REGISTRY
from luki_gateway.routes.access import PUBLIC, declare
from luki_gateway.settings import Settings

# Methods the HTTP parser accepts but no route serves: each must not become a label value.
ODD_METHODS = ("PROPFIND", "MKCOL", "PURGE", "LOCK", "UNLOCK", "SEARCH", "REPORT", "COPY", "MOVE")
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample named ``name`` in Prometheus text."""
    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out.append((sample.labels, sample.value))
    return out


def series_count(app: web.Application) -> int:
    """How many samples the app's registry exposes in total."""
    return sum(len(metric.samples) for metric in app[REGISTRY].collect())


async def test_http_metrics_in_prometheus_text(gateway: Callable[..., Any]) -> None:
    """Requests are counted by route pattern, method and status, and timed by route."""
    client = await gateway()
    for _ in range(3):
        await client.get("/healthz")
    await client.get("/nope")
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    text = await resp.text()
    counts = {(s["route"], s["method"], s["status"]): v
              for s, v in samples(text, "luki_http_requests_total")}
    assert counts[("/healthz", "GET", "200")] == 3
    assert counts[("unmatched", "GET", "404")] == 1
    buckets = samples(text, "luki_http_request_duration_seconds_bucket")
    assert any(s["route"] == "/healthz" and s["le"] == "+Inf" and v == 3 for s, v in buckets)
    assert samples(text, "luki_http_requests_in_flight") == [({}, 1.0)]  # this scrape


async def test_openmetrics_when_asked(gateway: Callable[..., Any]) -> None:
    """An OpenMetrics Accept header gets the OpenMetrics format, ending in # EOF."""
    client = await gateway()
    await client.get("/healthz")
    resp = await client.get("/metrics", headers={"Accept": OPENMETRICS})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    text = await resp.text()
    assert text.rstrip().endswith("# EOF")
    assert 'luki_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text


async def test_each_app_has_its_own_registry(gateway: Callable[..., Any]) -> None:
    """Two apps in one process count separately (no global registry)."""
    first = await gateway()
    second = await gateway()
    await first.get("/healthz")
    text = await (await second.get("/metrics")).text()
    assert not any(s["route"] == "/healthz" for s, _ in samples(text, "luki_http_requests_total"))


async def test_unknown_paths_and_methods_add_no_series(gateway: Callable[..., Any]) -> None:
    """10,000 requests to random unknown paths (and odd methods) add no new series."""
    client = await gateway()
    await client.get(f"/warmup/{uuid.uuid4()}")
    await client.request("PROPFIND", f"/warmup/{uuid.uuid4()}")
    app = client.server.app
    before = series_count(app)
    semaphore = asyncio.Semaphore(32)

    async def one(i: int) -> int:
        async with semaphore:
            method = "GET" if i % 10 else ODD_METHODS[i // 10 % len(ODD_METHODS)]
            async with client.request(method, f"/{uuid.uuid4()}/{i}?q={i}") as resp:
                return resp.status

    statuses = await asyncio.gather(*(one(i) for i in range(10_000)))
    assert set(statuses) <= {404, 405}
    assert series_count(app) == before
    text = await (await client.get("/metrics")).text()
    routes = {s["route"] for s, _ in samples(text, "luki_http_requests_total")}
    assert routes == {"unmatched"}
    methods = {s["method"] for s, _ in samples(text, "luki_http_requests_total")}
    assert methods <= {"GET", "OTHER"}


async def test_in_flight_counts_open_streams(serve_app: Callable[..., Any],
                                            make_settings: Callable[..., Settings]) -> None:
    """A stream being served shows in luki_http_requests_in_flight until it ends."""
    release = asyncio.Event()

    async def held(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"started\n")
        await release.wait()
        await resp.write_eof()
        return resp

    app = create_app(make_settings())
    declare(app, app.router.add_get("/test/held", held), PUBLIC)
    client = await serve_app(app)
    resp = await client.get("/test/held")
    assert await resp.content.readline() == b"started\n"
    text = await (await client.get("/metrics")).text()
    assert samples(text, "luki_http_requests_in_flight") == [({}, 2.0)]
    release.set()
    await resp.read()
    text = await (await client.get("/metrics")).text()
    assert samples(text, "luki_http_requests_in_flight") == [({}, 1.0)]
    counts = {s["route"]: v for s, v in samples(text, "luki_http_requests_total")}
    assert counts["/test/held"] == 1
