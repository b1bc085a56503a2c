"""Request identity: X-Request-ID and W3C trace context for one request."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from aiohttp import web

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# W3C trace context: lowercase hex only; versions after 00 may append "-..." fields.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True, slots=True)
class TraceContext:
    """Who this request is in logs and to upstreams: request id, trace id and our span id."""

    request_id: str
    trace_id: str
    span_id: str
    flags: str = "01"

    @property
    def traceparent(self) -> str:
        """The W3C traceparent naming the gateway's span as parent of upstream calls."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    @classmethod
    def from_headers(cls, request_id: str | None, traceparent: str | None) -> TraceContext:
        """Accept a sane X-Request-ID and a valid traceparent; generate what is missing."""
        trace_id = None
        flags = "01"
        if traceparent:
            match = _TRACEPARENT.fullmatch(traceparent.strip())
            if (match and match[1] != "ff" and (match[5] is None or match[1] != "00")
                    and match[2] != _ZERO_TRACE and match[3] != _ZERO_SPAN):
                trace_id, flags = match[2], match[4]
        # One getrandom call for both ids: 24 random bytes, as 48 hex digits.
        fresh = os.urandom(24).hex()
        if trace_id is None:
            trace_id = fresh[:32]
        rid = request_id if request_id and _SANE_REQUEST_ID.fullmatch(request_id) else trace_id
        return cls(request_id=rid, trace_id=trace_id, span_id=fresh[32:], flags=flags)

    @classmethod
    def new(cls) -> TraceContext:
        """A fresh context for work that does not start from a request (e.g. WS messages)."""
        return cls.from_headers(None, None)


REQUEST_TRACE = web.RequestKey("trace", TraceContext)


def trace_of(request: web.Request) -> TraceContext:
    """This request's trace context (set by the request-context middleware)."""
    trace = request.get(REQUEST_TRACE)
    if trace is None:
        trace = TraceContext.from_headers(request.headers.get("X-Request-ID"),
                                          request.headers.get("traceparent"))
        request[REQUEST_TRACE] = trace
    return trace
