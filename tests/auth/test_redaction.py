"""No credential reaches a log line on any auth path (header, subprotocol, ticket, query,
refusals, oversized headers); the access log names the principal by its display form."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

import structlog

from luki_gateway.auth.authenticator import AUTHENTICATOR
from luki_gateway.log import REDACTED, redact_text

from ..conftest import make_token
from .probe import Probe

SERVICE_TOKEN = "svc-agent-" + "q" * 32


async def test_no_credential_in_any_log_line(
        probe: Callable[..., Any],
        captured_logs: Callable[[], list[dict[str, Any]]]) -> None:
    """Every auth path, accepted or refused, logs displays and reasons, never secrets."""
    p: Probe = await probe(access_log=True, auth={"service_tokens": [
        {"name": "agent", "sha256": hashlib.sha256(SERVICE_TOKEN.encode()).hexdigest(),
         "scopes": ["chat:write"]}]})
    key = await p.add_key(scopes=("chat:write",))
    token = make_token("alice", ("chat:write",))
    secrets = [key, token, SERVICE_TOKEN]
    c = p.client

    def bearer(value: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {value}"}

    for value in (key, token, SERVICE_TOKEN):
        assert (await c.post("/t/chat", headers=bearer(value))).status == 200
        assert (await c.post("/t/chat", headers=bearer(value[:-2]))).status == 401
        assert (await c.post(f"/t/chat?access_token={value}")).status == 401
    ticket = (await (await c.post("/v1/auth/ticket", headers=bearer(key))).json())["ticket"]
    secrets.append(ticket)
    assert (await c.get("/t/stream", params={"ticket": ticket})).status == 200
    assert (await c.get("/t/stream", params={"ticket": ticket[:-3]})).status == 401
    assert (await c.post("/t/chat", headers=bearer(ticket))).status == 401
    async with c.ws_connect("/t/ws", protocols=("bearer", token)) as ws:
        await ws.receive_json(timeout=5)
    huge = token + "A" * 9000  # over aiohttp's header limit: its parser logs the line
    assert (await c.post("/t/chat", headers=bearer(huge))).status in (400, 401)
    # A careless log line in our own code path would be caught here too.
    structlog.get_logger("luki.test").info(f"debug {ticket} {key}", ticket=ticket)
    logging.getLogger("luki.test").warning("stdlib %s %s", token, ticket)
    await p.app[AUTHENTICATOR].authenticate_token(token)

    lines = captured_logs()
    text = json.dumps(lines)
    for secret in secrets:
        assert secret not in text
        assert secret[8:40] not in text
    assert REDACTED in text
    principals = {line.get("principal") for line in lines if line.get("event") == "request"}
    assert {"jwt:alice", "svc:agent"} <= principals
    assert any(p and p.startswith("sk_live_") and "…" in p for p in principals)
    reasons = {line.get("reason") for line in lines if line.get("event") == "credential refused"}
    assert {"malformed", "bad_signature", "invalid_ticket", "token_in_query"} & reasons


def test_ticket_pattern_is_redacted_in_free_text() -> None:
    """tk_ tickets are masked wherever they appear in text."""
    assert redact_text("see tk_abcdefghijk.sigsigsig here") == f"see {REDACTED} here"
