"""The reference upstreams, reached through the real gateway as a newcomer would."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from luki_gateway.devstack.cognitive import create_cognitive_app
from luki_gateway.devstack.engagement import create_engagement_app
from luki_gateway.devstack.memory import create_memory_app
from luki_gateway.devstack.reports import create_reports_app

from ..conftest import bearer, closed_port_url

Client = TestClient[Any, Any]
ALL_SCOPES = ("elr:read", "elr:write", "activities:read", "reports:write", "reports:read",
              "cognitive:read", "cognitive:write")


@pytest.fixture
async def stack(gateway: Callable[..., Any], upstream: Callable[..., Any]) -> Client:
    """The gateway pointed at the four reference REST upstreams on real sockets."""
    running = {
        "memory": await upstream(create_memory_app()),
        "engagement": await upstream(create_engagement_app()),
        "reports": await upstream(create_reports_app()),
        "cognitive": await upstream(create_cognitive_app()),
    }
    # Picked after the others are listening: a port freed first could be handed to one of
    # them, and the "down" agent would then answer /health.
    client: Client = await gateway(upstreams={"agent": closed_port_url(), **running})
    return client


def auth(sub: str = "alice") -> dict[str, str]:
    """Bearer header for ``sub`` with every reference-route scope."""
    return bearer(sub, ALL_SCOPES)


async def test_elr_ingest_list_search_get_delete(stack: Client) -> None:
    """The ELR round trip; the user comes from the gateway's X-LUKi-Principal."""
    resp = await stack.post("/v1/elr/ingest_text", json={"text": "Walked in the park with Anna",
                                                         "tags": ["outdoors"]}, headers=auth())
    assert resp.status == 201
    item = await resp.json()
    assert item["user_id"] == "alice"
    await stack.post("/v1/elr/ingest_text", json={"text": "Baked bread"}, headers=auth())
    await stack.post("/v1/elr/ingest_text", json={"text": "park bench"}, headers=auth("bob"))

    listed = await (await stack.get("/v1/elr/items?limit=10", headers=auth())).json()
    assert listed["total"] == 2
    assert [i["text"] for i in listed["items"]] == ["Baked bread",
                                                    "Walked in the park with Anna"]

    found = await (await stack.get("/v1/elr/search?q=park", headers=auth())).json()
    assert [r["item"]["item_id"] for r in found["results"]] == [item["item_id"]]
    found = await (await stack.post("/v1/elr/search", json={"query": "bread", "k": 1},
                                    headers=auth())).json()
    assert found["results"][0]["item"]["text"] == "Baked bread"

    path = f"/v1/elr/items/{item['item_id']}"
    assert (await stack.get(path, headers=auth("bob"))).status == 404  # not bob's
    assert (await stack.delete(path, headers=auth())).status == 204
    assert (await stack.get(path, headers=auth())).status == 404


@pytest.mark.parametrize(("body", "status"), [
    (b"{not json", 400),
    (b"[1, 2]", 400),
    (b'{"text": 5}', 422),
    (b'{"text": ""}', 422),
    (b'{"text": "x", "tags": "a"}', 422),
])
async def test_elr_bad_bodies(stack: Client, body: bytes, status: int) -> None:
    """Malformed or wrongly typed ingest bodies get the upstream's error through the proxy."""
    resp = await stack.post("/v1/elr/ingest_text", data=body, headers={
        **auth(), "Content-Type": "application/json"})
    assert resp.status == status
    assert (await resp.json())["error"]["code"] == "VALIDATION_ERROR"


async def test_elr_bad_paging(stack: Client) -> None:
    """limit outside 1..100 is refused with 422."""
    resp = await stack.get("/v1/elr/items?limit=0", headers=auth())
    assert resp.status == 422


async def test_activities_recommend(stack: Client) -> None:
    """k recommendations, stable per user, different across users; k is bounded."""
    first = await (await stack.get("/v1/activities/recommend?user_id=u1&k=4",
                                   headers=auth())).json()
    again = await (await stack.get("/v1/activities/recommend?user_id=u1&k=4",
                                   headers=auth())).json()
    other = await (await stack.get("/v1/activities/recommend?user_id=u2&k=4",
                                   headers=auth())).json()
    assert len(first["recommendations"]) == 4
    assert first == again
    assert first["recommendations"] != other["recommendations"]
    resp = await stack.get("/v1/activities/recommend?k=abc", headers=auth())
    assert resp.status == 422


async def test_reports_generate_and_fetch(stack: Client) -> None:
    """POST /v1/reports/generate makes a report that GET returns; bad kind is 422."""
    resp = await stack.post("/v1/reports/generate", json={"kind": "summary"}, headers=auth())
    assert resp.status == 201
    report = await resp.json()
    assert report["user_id"] == "alice"
    assert report["sections"]
    fetched = await stack.get(f"/v1/reports/{report['report_id']}", headers=auth())
    assert (await fetched.json()) == report
    resp = await stack.post("/v1/reports/generate", json={"kind": "yearly"}, headers=auth())
    assert resp.status == 422


async def test_cognitive(stack: Client) -> None:
    """analyze scores sentiment; exercises lists k items."""
    body = await (await stack.post("/v1/cognitive/analyze",
                                   json={"text": "I feel calm and happy today"},
                                   headers=auth())).json()
    assert body["sentiment"] == "positive"
    assert body["words"] == 6
    body = await (await stack.get("/v1/cognitive/exercises?k=3", headers=auth())).json()
    assert len(body["exercises"]) == 3


async def test_health_cascade_over_reference_upstreams(stack: Client) -> None:
    """Every reference upstream answers /health; with the critical agent down: unhealthy."""
    body = await (await stack.get("/health")).json()
    for name in ("memory", "engagement", "reports", "cognitive"):
        assert body["services"][name]["status"] == "healthy"
    assert body["status"] == "unhealthy"  # the agent (critical) is not running
