"""GET /v1/events (SSE subscription, resumable) and POST /v1/events/publish (single or batch)."""

from __future__ import annotations

import json
import socket
from typing import Any

from aiohttp import HttpVersion11, web
from marshmallow import Schema, ValidationError, fields, validate

from ..auth.principal import ANONYMOUS, PRINCIPAL, Principal
from ..errors import PayloadTooLarge, Unauthenticated, ValidationFailed
from ..hub.channels import (
    CHANNEL_EXPECTED,
    is_channel_name,
    publish_refusal,
    subscribe_refusal,
    validate_channel,
)
from ..hub.hub import HUB, close_streams
from ..hub.sse_stream import SseStream, parse_last_event_id
from ..middlewares.access import STREAM_SENT
from ..ratelimit.leases import LEASES, Lease
from ..settings import SETTINGS
from ..validation import load, parse_json, read_body
from .access import RouteAccess, declare

MAX_BATCH = 100
# A peer that leaves sent data unacknowledged this long is aborted by the kernel.
SEND_TIMEOUT_S = 120
_TCP_USER_TIMEOUT: int | None = getattr(socket, "TCP_USER_TIMEOUT", None)
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                "Connection": "keep-alive", "X-Accel-Buffering": "no"}
# The gateway's own SSE notices: an event of a publisher's named so would look like one.
RESERVED_EVENT_NAMES = ("gap", "reset", "error", "reconnect")
_EVENT_NAME = validate.And(
    validate.Regexp(r"\A[A-Za-z][A-Za-z0-9_.:-]{0,63}\Z",  # \Z: "$" allows a final \n
                    error="event must be a name like 'update' or 'order.created'"),
    validate.NoneOf(RESERVED_EVENT_NAMES,
                    error="event names gap, reset, error and reconnect are the gateway's own"))


def _principal(request: web.Request) -> Principal:
    found: Principal | None = request.get(PRINCIPAL)
    if found is None:
        if request.app[SETTINGS].auth.enabled:
            raise Unauthenticated()
        return ANONYMOUS
    return found


def _json_object(value: Any) -> None:
    if not isinstance(value, dict):
        raise ValidationError("data must be a JSON object")


def _channel_name(value: str) -> None:
    # In the schema, so a bad name is a refused field (422, details.fields; in a batch
    # under the item's index) like every other one.
    if not is_channel_name(value):
        raise ValidationError(f"channel name is not valid; expected {CHANNEL_EXPECTED}")


class PublishSchema(Schema):
    """One event to publish: ``{channel, event?, data}``."""

    channel = fields.String(required=True, validate=_channel_name)
    event = fields.String(load_default=None, allow_none=True, validate=_EVENT_NAME)
    data = fields.Raw(required=True, validate=_json_object)


class BatchSchema(Schema):
    """Several events in one request: ``{"events": [{channel, event?, data}, ...]}``."""

    events = fields.List(fields.Nested(PublishSchema), required=True,
                         validate=validate.Length(min=1, max=MAX_BATCH))


async def publish(request: web.Request) -> web.Response:
    """Publish one event (or a batch, in order) to every subscriber on every process."""
    principal = _principal(request)
    refusal = publish_refusal(principal)
    if refusal is not None:
        raise refusal
    settings = request.app[SETTINGS]
    limit = settings.hub.publish_max_bytes
    raw = parse_json(await read_body(request, max_bytes=min(settings.max_body_bytes,
                                                            limit * MAX_BATCH + 4096)))
    batch = isinstance(raw, dict) and "events" in raw
    items = load(BatchSchema, raw)["events"] if batch else [load(PublishSchema, raw)]
    encoded = []
    for index, item in enumerate(items):
        # Serialised once here; every subscriber then shares the same bytes.
        data = json.dumps(item["data"], separators=(",", ":"), ensure_ascii=False)
        if len(data.encode()) > limit:
            raise PayloadTooLarge("event data is over the publish limit",
                                  details={"max_bytes": limit, "index": index})
        encoded.append(data)
    hub = request.app[HUB]
    results = []
    for item, data in zip(items, encoded, strict=True):
        event, delivered = await hub.publish(item["channel"], item["event"], data)
        results.append({"channel": event.channel, "id": event.id,
                        "delivered_local": delivered})
    body: dict[str, Any] = {"results": results} if batch else results[0]
    return web.json_response(body)


async def subscribe_sse(request: web.Request) -> web.StreamResponse:
    """SSE stream of one or more channels; resumes after ``Last-Event-ID``/``last_event_id``.

    This coroutine lives as long as the stream and its frame is paid per idle connection:
    checks and set-up run in ``_open`` (their locals gone once done), the wait inline.
    """
    response = web.StreamResponse(headers=_SSE_HEADERS)
    stream = await _open(request, response)
    if stream is not None:
        try:
            await stream.wait_closed()
        finally:
            stream.close()
            await stream.run_close_callbacks()
            await _release(request, stream.lease, stream.previous_send_timeout)
    return response


def _checked(request: web.Request) -> tuple[Principal, list[str], dict[str, str]]:
    """The caller, the channels it may subscribe to and where to resume each; or raise."""
    settings = request.app[SETTINGS].hub
    channels = list(dict.fromkeys(request.query.getall("channel", [])))
    if not channels:
        raise ValidationFailed("at least one channel query parameter is required")
    if len(channels) > settings.ws_max_subscriptions:
        raise ValidationFailed("too many channels", details={
            "limit": settings.ws_max_subscriptions})
    for channel in channels:
        validate_channel(channel)
    principal = _principal(request)
    for channel in channels:
        refusal = subscribe_refusal(principal, channel, settings)
        if refusal is not None:
            raise refusal
    # The header wins: it is what the browser sends on its own reconnects.
    raw_last = request.headers.get("Last-Event-ID") or request.query.get("last_event_id", "")
    resume = parse_last_event_id(raw_last, channels)
    if raw_last.strip() and not resume:
        raise ValidationFailed("Last-Event-ID is not an event id of these channels")
    return principal, channels, resume


def _send_timeout(request: web.Request, milliseconds: int) -> int | None:
    """Let the kernel abort a peer that leaves sent data unacknowledged this long (Linux).

    Returns the previous value (None where unsupported), to restore before keep-alive reuse.
    """
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if (_TCP_USER_TIMEOUT is None or sock is None
            or sock.family not in (socket.AF_INET, socket.AF_INET6)):
        return None
    previous: int = sock.getsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, milliseconds)
    return previous


async def _release(request: web.Request, lease: Lease | None,
                   previous_send_timeout: int | None) -> None:
    if previous_send_timeout is not None:
        _send_timeout(request, previous_send_timeout)
    if lease is not None:
        await lease.release()


async def _open(request: web.Request, response: web.StreamResponse) -> SseStream | None:
    """Check, take a lease, prepare the stream and replay what was asked for.

    The registered stream, or None when the client left during set-up.
    """
    principal, channels, resume = _checked(request)
    app = request.app
    hub = app[HUB]
    lease = await app[LEASES].acquire(principal, "sse") if LEASES in app else None
    previous_timeout: int | None = None
    stream: SseStream | None = None
    try:
        previous_timeout = _send_timeout(request, SEND_TIMEOUT_S * 1000)
        await response.prepare(request)
        # Sent: the headers need not live as long as the stream.
        response.headers.clear()
        transport = request.transport
        if transport is None:
            await _release(request, lease, previous_timeout)
            return None
        stream = SseStream(hub, principal, transport, request.protocol,
                           chunked=request.version >= HttpVersion11, single=len(channels) == 1,
                           lease=lease, previous_send_timeout=previous_timeout)
        hub.register(stream)
        request[STREAM_SENT] = stream
        # Every channel's position first: an event or notice of one channel carries the
        # stream's whole position as its id.
        for channel in channels:
            if channel in resume:
                stream.channels[channel] = resume[channel]
        for channel in channels:
            last_id = resume.get(channel)
            if last_id is None:
                hub.subscribe(stream, channel)
            else:
                await hub.subscribe_from(stream, channel, last_id)
    except BaseException:
        if stream is not None:
            stream.close()
            await stream.run_close_callbacks()
        await _release(request, lease, previous_timeout)
        raise
    return stream


def setup(app: web.Application) -> None:
    """Add the routes: GET /v1/events (SSE) and POST /v1/events/publish."""
    declare(app, app.router.add_get("/v1/events", subscribe_sse, allow_head=False),
            RouteAccess(ticket=True))
    declare(app, app.router.add_post("/v1/events/publish", publish),
            RouteAccess(scopes={"POST": ("events:publish",)}))
    # Streams get their reconnect hint as soon as shutdown starts (hub/hub.py).
    app.on_shutdown.append(close_streams)
