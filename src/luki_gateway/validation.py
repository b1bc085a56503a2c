"""Reading and validating JSON request bodies (and WS messages) with marshmallow.

Handlers call ``await read_json(request, MySchema)``; every failure is a ``ValidationFailed``
the error middleware renders in the one error shape:

- body not JSON / not UTF-8 / empty / not an object, or a string with a lone surrogate
  escape -> 400 ``VALIDATION_ERROR``
- JSON that the schema refuses (missing/unknown fields, wrong types) -> 422 ``VALIDATION_ERROR``
  with ``details.fields`` = marshmallow's messages (at most ``MAX_FIELD_ERRORS`` entries)
- body over ``client_max_size`` / ``max_bytes`` -> 413 ``PAYLOAD_TOO_LARGE``
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from marshmallow import Schema, ValidationError

from .errors import PayloadTooLarge, ValidationFailed

# A body with thousands of bad keys must not produce a thousand-line error answer.
MAX_FIELD_ERRORS = 20

SchemaLike = Schema | type[Schema]


def _schema(schema: SchemaLike) -> Schema:
    return schema() if isinstance(schema, type) else schema


def _bounded(messages: Any) -> Any:
    if isinstance(messages, Mapping) and len(messages) > MAX_FIELD_ERRORS:
        kept = dict(list(messages.items())[:MAX_FIELD_ERRORS])
        kept["_truncated"] = [f"{len(messages) - MAX_FIELD_ERRORS} more errors not shown"]
        return kept
    return messages


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e999: would go out again as Infinity
        raise ValueError(f"number {text[:20]} is too large")
    return value


# A constant (stateless) decoder: json.loads with arguments would build one per call.
_STRICT = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)


def strict_json(text: str | bytes) -> Any:
    """``json.loads`` without Python's NaN/Infinity extensions and without numbers that
    overflow to infinity (not JSON: forwarded, a strict parser downstream chokes on them).

    ValueError when ``text`` is not such JSON; RecursionError when it nests too deeply.
    """
    return _STRICT.decode(text if isinstance(text, str) else text.decode())


# A JSON escape of a UTF-16 surrogate half (\ud800-\udfff). A pair decodes to one
# character; a lone half decodes to a str that cannot be encoded as UTF-8, so every answer,
# forward or fan-out of it would fail. Only a body that has such an escape is walked.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate in any string (key or value) of ``value``, if any."""
    stack = [value]  # iterative: a value nested as deep as the decoder allows is fine
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found = _SURROGATE.search(item)
            if found is not None:
                return found.group()
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def client_json(text: str) -> Any:
    """``strict_json`` for what clients send (bodies, WebSocket messages): a string with a
    lone surrogate escape (``"\\ud800"``) is refused too (ValueError).
    """
    value = strict_json(text)
    if _SURROGATE_ESCAPE.search(text):
        found = _lone_surrogate(value)
        if found is not None:
            raise ValueError(f"lone surrogate \\u{ord(found):04x} in a string "
                             "(UTF-16 halves must come in pairs)")
    return value


def parse_json(raw: bytes | str) -> Any:
    """Decode a JSON document; 400 VALIDATION_ERROR (with line/column) when it is not one."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationFailed("request body is not valid UTF-8") from None
    if not raw.strip():
        raise ValidationFailed("request body is empty; expected a JSON object")
    try:
        return client_json(raw)
    except json.JSONDecodeError as exc:
        raise ValidationFailed("request body is not valid JSON",
                               details={"line": exc.lineno, "column": exc.colno}) from None
    except ValueError as exc:  # NaN, Infinity, a lone surrogate
        raise ValidationFailed(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ValidationFailed("request body nests too deeply") from None


def load(schema: SchemaLike, data: Any) -> dict[str, Any]:
    """Validate already-decoded data (e.g. a WebSocket message) against ``schema``.

    Not an object -> 400; refused by the schema -> 422 with ``details.fields``.
    """
    if not isinstance(data, dict):
        raise ValidationFailed("expected a JSON object",
                               details={"got": type(data).__name__})
    try:
        result: dict[str, Any] = _schema(schema).load(data)
    except ValidationError as exc:
        raise ValidationFailed("request failed validation", status=422,
                               details={"fields": _bounded(exc.messages)}) from None
    return result


async def read_body(request: web.Request, *, max_bytes: int | None = None) -> bytes:
    """The whole request body, bounded by ``client_max_size`` and ``max_bytes`` (413)."""
    if max_bytes is not None and (request.content_length or 0) > max_bytes:
        raise PayloadTooLarge(details={"max_bytes": max_bytes})
    raw = await request.read()  # raises 413 past client_max_size, chunked bodies included
    if max_bytes is not None and len(raw) > max_bytes:
        raise PayloadTooLarge(details={"max_bytes": max_bytes})
    return raw


async def read_json(request: web.Request, schema: SchemaLike, *,
                    max_bytes: int | None = None) -> dict[str, Any]:
    """Read the body as a JSON object and ``schema.load`` it; see the module doc for errors."""
    return load(schema, parse_json(await read_body(request, max_bytes=max_bytes)))
