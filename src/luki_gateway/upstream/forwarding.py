"""Header hygiene for proxied requests and responses.

One pass over the incoming headers builds the one copy the upstream gets: hop-by-hop
headers and those named in ``Connection`` dropped, client ``X-LUKi-*`` and forwarding
headers replaced by ours, trace headers set, identity added from the principal.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web

from ..auth.principal import PRINCIPAL
from ..tracing import trace_of

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 9110 7.6.1 plus the legacy proxy ones; never forwarded in either direction.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
    "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade",
})

# Request headers the gateway sets itself (dropped from the client's copy).
_REQUEST_DROP = HOP_BY_HOP | {
    "host", "content-length", "expect", "x-request-id", "traceparent", "tracestate",
    # The gateway consumed the credential; upstreams get X-LUKi-* identity instead.
    "authorization",
}
# Only believed when the peer is a trusted proxy.
_FORWARDING = frozenset({"forwarded", "x-forwarded-for", "x-forwarded-proto",
                         "x-forwarded-host", "x-real-ip"})
_LUKI = "x-luki-"
_PLAIN_CONNECTION = frozenset({"keep-alive", "close", "Keep-Alive", "Close"})


@dataclass(frozen=True, slots=True)
class ForwardingPolicy:
    """Which peers may pass their own forwarding headers through (trusted proxies)."""

    trusted: tuple[IpNetwork, ...] = ()

    @classmethod
    def parse(cls, trusted_proxies: Iterable[str]) -> ForwardingPolicy:
        """Networks from ``TRUSTED_PROXIES`` entries (addresses or CIDRs)."""
        return cls(tuple(ipaddress.ip_network(p.strip(), strict=False)
                         for p in trusted_proxies if p.strip()))

    def trusts(self, remote: str | None) -> bool:
        """True when ``remote`` is one of the trusted proxies."""
        if not self.trusted or not remote:
            return False
        try:
            address = ipaddress.ip_address(remote)
        except ValueError:
            return False
        return any(address in net for net in self.trusted)


def _connection_tokens(value: str) -> frozenset[str]:
    if value in _PLAIN_CONNECTION:
        return frozenset()  # the usual values name no other header
    return frozenset(t.strip().lower() for t in value.split(",") if t.strip())


def _forwarded_node(remote: str) -> str:
    # RFC 7239 6: IPv6 addresses are bracketed and the value quoted.
    return f'"[{remote}]"' if ":" in remote else remote


def request_headers(request: web.Request, policy: ForwardingPolicy) -> list[tuple[str, str]]:
    """The headers to send upstream for ``request`` (one list, built in one pass)."""
    incoming = request.headers
    remote = request.remote or "unknown"
    trusted = policy.trusts(request.remote)
    connection = incoming.get("Connection")
    named = _connection_tokens(connection) if connection else frozenset()
    out: list[tuple[str, str]] = []
    prior_for: list[str] = []
    prior_forwarded: list[str] = []
    has_proto = has_host = False
    for name, value in incoming.items():
        lname = name.lower()
        if lname in _REQUEST_DROP or lname in named or lname.startswith(_LUKI):
            continue
        if lname in _FORWARDING:
            if not trusted:
                continue
            if lname == "x-forwarded-for":
                prior_for.append(value)
                continue
            if lname == "forwarded":
                prior_forwarded.append(value)
                continue
            has_proto = has_proto or lname == "x-forwarded-proto"
            has_host = has_host or lname == "x-forwarded-host"
        out.append((name, value))

    host = incoming.get("Host", "")
    proto = request.scheme
    out.append(("X-Forwarded-For", ", ".join([*prior_for, remote]) if prior_for else remote))
    if not has_proto:
        out.append(("X-Forwarded-Proto", proto))
    if not has_host:
        out.append(("X-Forwarded-Host", host))
    element = f"for={_forwarded_node(remote)};proto={proto}"
    if host and '"' not in host and "\\" not in host:  # must stay one quoted-string
        element += f';host="{host}"'
    out.append(("Forwarded", ", ".join([*prior_forwarded, element]) if prior_forwarded
                else element))

    trace = trace_of(request)
    out.append(("X-Request-ID", trace.request_id))
    out.append(("traceparent", trace.traceparent))
    if "tracestate" in incoming and trace.trace_id in incoming.get("traceparent", ""):
        # W3C: a continued trace carries the caller's vendor state along, unchanged (several
        # header fields combined into one list).
        out.append(("tracestate", ",".join(incoming.getall("tracestate"))))
    principal = request.get(PRINCIPAL)
    if principal is not None:
        out.append(("X-LUKi-Principal", principal.subject))
        out.append(("X-LUKi-Scopes", " ".join(sorted(principal.scopes))))
        out.append(("X-LUKi-Auth-Type", principal.kind))
    return out


# Response headers that are the gateway's policy, not the upstream's: its security headers
# (an upstream's "X-Frame-Options: ALLOWALL" must not undo the gateway's DENY) and CORS
# (CORS_ORIGINS decides; an upstream's "Access-Control-Allow-Origin: *" would also clash
# with the gateway's own and break the response).
GATEWAY_OWNED = frozenset({"x-frame-options", "strict-transport-security",
                           "x-content-type-options", "referrer-policy"})


def response_headers(upstream_headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Upstream response headers minus hop-by-hop ones, those named in Connection and
    those the gateway owns (security headers, CORS)."""
    out: list[tuple[str, str]] = []
    named: frozenset[str] = frozenset()
    for name, value in upstream_headers:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == "connection":
                named |= _connection_tokens(value)
            continue
        if lname in GATEWAY_OWNED or lname.startswith("access-control-"):
            continue
        out.append((name, value))
    if named:  # named in Connection: hop-by-hop for this message
        out = [(name, value) for name, value in out if name.lower() not in named]
    return out
