"""One published event and its wire encodings, each built once and shared by every subscriber.

Fan-out cost must not grow with per-subscriber serialisation: the WebSocket frame and the SSE
chunk of an event are encoded the first time a subscriber needs them and then reused by all.
"""

from __future__ import annotations

import json
import struct

_LEN1 = struct.Struct("!BB").pack
_LEN2 = struct.Struct("!BBH").pack
_LEN3 = struct.Struct("!BBQ").pack

OPCODE_TEXT = 0x1
OPCODE_PING = 0x9


def ws_frame(payload: bytes, opcode: int = OPCODE_TEXT) -> bytes:
    """An unmasked, uncompressed, final server-to-client WebSocket frame (RFC 6455 5.2)."""
    first = 0x80 | opcode
    length = len(payload)
    if length < 126:
        header = _LEN1(first, length)
    elif length < 65536:
        header = _LEN2(first, 126, length)
    else:
        header = _LEN3(first, 127, length)
    return header + payload


def http_chunk(data: bytes) -> bytes:
    """``data`` framed as one HTTP/1.1 chunk (SSE responses use chunked transfer coding)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def ws_json_frame(message: object) -> bytes:
    """A JSON message as one WebSocket text frame.

    A string with a lone surrogate (an agent's ``"\\ud800"``, kept as is by its JSON) has no
    UTF-8 form: such a message goes out with ``\\u`` escapes instead, as the agent sent it.
    """
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    try:
        data = text.encode()
    except UnicodeEncodeError:
        data = json.dumps(message, separators=(",", ":")).encode()
    return ws_frame(data)


def sse_block(data: str, *, event: str | None = None, event_id: str | None = None) -> bytes:
    """One SSE event block; ``data`` must be a single line (compact JSON always is)."""
    parts = []
    if event_id is not None:
        parts.append(f"id: {event_id}\n")
    if event is not None:
        parts.append(f"event: {event}\n")
    parts.append(f"data: {data}\n\n")
    return "".join(parts).encode()


class Event:
    """A channel event with its history id; ``data`` is already-encoded compact JSON."""

    __slots__ = ("_sse_body", "_sse_chunk", "_ws_frame", "channel", "data", "id", "name")

    def __init__(self, channel: str, event_id: str, name: str | None, data: str) -> None:
        self.channel = channel
        self.id = event_id
        self.name = name
        self.data = data
        self._ws_frame: bytes | None = None
        self._sse_body: bytes | None = None
        self._sse_chunk: bytes | None = None

    def json_message(self) -> str:
        """The ``event`` message of the WebSocket protocol as JSON text."""
        name = "" if self.name is None else f',"event":{json.dumps(self.name)}'
        return (f'{{"type":"event","channel":{json.dumps(self.channel)},'
                f'"id":{json.dumps(self.id)}{name},"data":{self.data}}}')

    @property
    def ws(self) -> bytes:
        """The WebSocket text frame of this event (built once)."""
        frame = self._ws_frame
        if frame is None:
            frame = self._ws_frame = ws_frame(self.json_message().encode())
        return frame

    @property
    def sse_body(self) -> bytes:
        """The SSE block minus its ``id:`` line (shared by multi-channel SSE subscribers)."""
        body = self._sse_body
        if body is None:
            payload = (f'{{"channel":{json.dumps(self.channel)},"id":{json.dumps(self.id)},'
                       f'"data":{self.data}}}')
            body = self._sse_body = sse_block(payload, event=self.name)
        return body

    @property
    def sse(self) -> bytes:
        """The SSE block with ``id: <event id>`` as one HTTP chunk (built once)."""
        chunk = self._sse_chunk
        if chunk is None:
            chunk = self._sse_chunk = http_chunk(b"id: %b\n%b" % (self.id.encode(),
                                                                  self.sse_body))
        return chunk

    def to_wire(self) -> bytes:
        """How the broker carries this event between processes: id, name, data."""
        return b"%b\n%b\n%b" % (self.id.encode(), (self.name or "").encode(),
                                self.data.encode())

    @classmethod
    def from_wire(cls, channel: str, raw: bytes) -> Event:
        """Rebuild an event published by any process (see ``to_wire``)."""
        event_id, name, data = raw.split(b"\n", 2)
        return cls(channel, event_id.decode(), name.decode() or None, data.decode())
