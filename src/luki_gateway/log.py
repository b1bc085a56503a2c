"""structlog set-up: JSON lines in production, console in development, secrets redacted.

The redaction processor runs last before rendering, on every line from every logger
(structlog and stdlib alike): Authorization/Cookie values, API keys, JWTs, bearer tokens
and ``token=`` / ``ticket=`` query values never reach a log sink.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

from .settings import Settings

REDACTED = "[REDACTED]"

_SECRET_KEYS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "token", "ticket",
    "api_key", "apikey", "x-api-key", "password", "secret", "jwt", "access_token",
    "refresh_token", "sec-websocket-protocol", "pepper", "client_secret",
})
# Fields our own processors and middlewares fill with values that cannot hold a secret.
_OWN_KEYS = frozenset({"timestamp", "level", "logger", "request_id", "trace_id", "method",
                       "route", "status", "duration_ms"})
# (pattern, replacement, triggers): a pattern runs only when one of its triggers occurs in
# the lower-cased text, so ordinary strings cost a few substring checks instead of regexes
# (about 2 us each). Every pattern needs triggers that any of its matches contains.
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str, tuple[str, ...]], ...] = (
    # API keys: sk_live_..., sk_test_..., sk_dev_... (and any other sk_ key of 12+ chars);
    # 16+ so the display form sk_live_AbCd…wxyz (prefix + last 4) stays readable.
    (re.compile(r"\bsk_(?:(?:live|test|dev)_[A-Za-z0-9_\-]{16,}|[A-Za-z0-9_\-]{12,})"),
     REDACTED, ("sk_",)),
    # Stream tickets of ours: tk_<payload>.<signature>
    (re.compile(r"\btk_[A-Za-z0-9_\-]{8,}(?:\.[A-Za-z0-9_\-]*)?"), REDACTED, ("tk_",)),
    # JWTs (three base64url parts, header starts with eyJ)
    (re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"), REDACTED,
     ("eyj",)),
    # Header-like "Cookie: ..." / "X-API-Key=..." text: everything up to the line end
    (re.compile(r"(?i)\b(cookie|set-cookie|x-api-key|proxy-authorization)(\s*[:=]\s*)"
                r"[^\r\n]+"), rf"\1\2{REDACTED}", ("cookie", "x-api-key", "authorization")),
    # Authorization schemes followed by a credential
    (re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=\-]{8,}"), rf"\1 {REDACTED}",
     ("bearer", "basic", "token")),
    # Query/form values that carry credentials
    # (at the start of the text, or after ? & ; whitespace or a quote)
    (re.compile(r"(?i)(?<![^?&;\s\"'])((?:token|ticket|access_token|api_key|apikey|key|jwt"
                r"|auth)=)[^&\s\"']+"), rf"\1{REDACTED}", ("token=", "ticket=", "key=", "jwt=",
                                                          "auth=")),
)


# One search for all triggers: the common case (no trigger at all) stops here.
_ANY_TRIGGER = re.compile("|".join(re.escape(t) for *_, triggers in _SECRET_PATTERNS
                                   for t in triggers))


def redact_text(text: str) -> str:
    """Mask every credential-looking substring of ``text``."""
    lowered = text.lower()
    if _ANY_TRIGGER.search(lowered) is None:
        return text
    for pattern, replacement, triggers in _SECRET_PATTERNS:
        if any(trigger in lowered for trigger in triggers):
            text = pattern.sub(replacement, text)
            lowered = text.lower()
    return text


def _redact_value(key: str, value: Any) -> Any:
    if key.lower() in _SECRET_KEYS and value:
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_redact_value(key, v) for v in value]
    if value is None or isinstance(value, (int, float, bool)):
        return value
    if isinstance(value, (bytes, bytearray)):
        return redact_text(bytes(value).decode("utf-8", "replace"))
    # Exceptions, URLs, headers objects...: the renderer would str() them, secrets included.
    return redact_text(str(value))


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secrets in every field of the event."""
    for key, value in list(event_dict.items()):
        if value is None or isinstance(value, (int, float, bool)) or key in _OWN_KEYS:
            continue
        event_dict[key] = _redact_value(key, value)
    return event_dict


class _StderrSink:
    """Writes to whatever ``sys.stderr`` is now (so test capture and reconfiguration work)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Configure structlog and stdlib logging once per process from settings."""
    level = getattr(logging, settings.log_level)
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "console" if settings.is_development else "json"
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=False) if fmt == "console"
                     else structlog.processors.JSONRenderer())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    sink: Any = stream or _StderrSink()
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=sink),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sink)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, redact, renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log is replaced by ours (one line per request, with principal).
    logging.getLogger("aiohttp.access").disabled = True
