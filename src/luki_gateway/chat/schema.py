"""What a chat request may contain (HTTP bodies, the GET query and WebSocket messages)."""

from __future__ import annotations

import json
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates, validates_schema

from ..settings import ChatSettings

MAX_ID_CHARS = 128
ID_LENGTH = validate.Length(min=1, max=MAX_ID_CHARS)


def _context_size_check(max_bytes: int) -> Any:
    def check(value: Any) -> None:
        # Bytes of UTF-8, as sent: ASCII escapes would count "é" as 6 bytes, not 2.
        if len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
               ) > max_bytes:
            raise ValidationError(f"context must be at most {max_bytes} bytes of JSON")
    return check


def chat_schema(settings: ChatSettings, *, with_id: bool = False) -> Schema:
    """The body of POST /v1/chat, /v1/chat/stream (and, ``with_id``, the WS ``chat``)."""
    attrs: dict[str, Any] = {
        "message": fields.String(required=True, validate=validate.Length(
            min=1, max=settings.max_message_chars)),
        "user_id": fields.String(load_default=None, validate=ID_LENGTH),
        "context": fields.Dict(keys=fields.String(), load_default=None,
                               validate=_context_size_check(settings.max_context_bytes)),
    }
    if with_id:
        attrs["id"] = fields.String(required=True, validate=ID_LENGTH)
        attrs["type"] = fields.String()
    return Schema.from_dict(attrs, name="ChatWs" if with_id else "Chat")()


def plain_chat_body(data: Any, max_message_chars: int) -> dict[str, Any] | None:
    """The usual body, ``{"message"}`` with an optional ``user_id``, checked without
    marshmallow (whose load is tens of microseconds on the time-to-first-token path).

    Returns what :func:`chat_schema`'s load would, or None when anything else is there
    (``context``, unknown keys, wrong types or lengths): the schema then decides, and
    words its refusals.
    """
    if type(data) is not dict:
        return None
    message = data.get("message")
    if type(message) is not str or not 0 < len(message) <= max_message_chars:
        return None
    keys = 1
    user_id = data.get("user_id")
    if "user_id" in data:
        keys += 1
        if user_id is not None and (type(user_id) is not str
                                    or not 0 < len(user_id) <= MAX_ID_CHARS):
            return None
    if len(data) != keys:
        return None
    return {"message": message, "user_id": user_id, "context": None}


class CancelSchema(Schema):
    """WS ``cancel {id}``."""

    type = fields.String()
    id = fields.String(required=True, validate=ID_LENGTH)


class ResumeSchema(Schema):
    """WS ``resume {turn_id, last_seq, id?}``, or ``resume {id}``: the latest turn this
    principal started under that client id (its turn id not yet known to the client)."""

    type = fields.String()
    id = fields.String(load_default=None, validate=ID_LENGTH)
    turn_id = fields.String(load_default=None, validate=ID_LENGTH)
    last_seq = fields.Integer(load_default=0, strict=True, validate=validate.Range(min=0))

    @validates_schema
    def _names_a_turn(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("turn_id") is None and data.get("id") is None:
            raise ValidationError("name the turn: turn_id, or the id it was started with",
                                  "turn_id")

    @validates("turn_id")
    def _turn_id_shape(self, value: str | None, **_: Any) -> None:
        if value is None:
            return  # resume by the client's id
        if not value.isascii() or not value.replace("_", "").isalnum():
            raise ValidationError("not a turn id")
