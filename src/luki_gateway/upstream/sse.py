"""Incremental Server-Sent Events parser for upstream streams (WHATWG event-stream rules).

Fed raw chunks as they arrive; returns each event as soon as its blank line is seen, so
an event split over several chunks, several events in one chunk, CRLF/CR/LF line ends and
multi-line ``data:`` all come out right. Written here rather than taken from a library
because the relay's hot path wants bytes in, events out, with no per-line objects.
"""

from __future__ import annotations

from typing import NamedTuple

# An upstream that never ends an event must not grow our memory without bound.
DEFAULT_MAX_EVENT_BYTES = 1_048_576


class SseEvent(NamedTuple):
    """One dispatched event: its type (``message`` when unnamed), data and last id."""

    event: str
    data: str
    id: str | None


class SseProtocolError(ValueError):
    """The byte stream is not an event stream (bad UTF-8, an event over the size cap)."""


class SseParser:
    """Feed bytes, get complete events; keeps the partial event between calls."""

    __slots__ = ("_buf", "_last_id", "_max", "_pending_cr", "error", "retry_ms")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._buf = b""
        self._last_id: str | None = None
        self._max = max_event_bytes
        self._pending_cr = False
        self.retry_ms: int | None = None
        # Set when a block could not be decoded; the events before it were still returned.
        self.error: SseProtocolError | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Consume ``chunk``; return the events it completed (possibly none).

        A block that is not valid UTF-8 stops parsing: the events before it are returned
        and :attr:`error` is set. An event over the size cap raises at once.
        """
        events: list[SseEvent] = []
        for block in self.blocks(chunk):
            try:
                event = self.parse_block(block)
            except SseProtocolError as exc:
                # Events before the bad one were complete: hand them out, then fail.
                self.error = exc
                self._buf = b""
                return events
            if event is not None:
                events.append(event)
        return events

    def blocks(self, chunk: bytes) -> list[bytes]:
        """Consume ``chunk``; return the raw event blocks it completed, LF line ends, no
        blank line (the relay's hot path looks at these bytes before any decoding).

        Hand each block to :meth:`parse_block` (or read it yourself) in order. An event
        over the size cap raises at once.
        """
        if self.error is not None:
            raise self.error
        if b"\r" in chunk or self._pending_cr:
            chunk = self._normalise(chunk)
        buf = self._buf + chunk if self._buf else chunk
        if b"\n\n" not in buf:
            if len(buf) > self._max:
                raise SseProtocolError("upstream event exceeds the size limit")
            self._buf = buf
            return []
        blocks = buf.split(b"\n\n")
        self._buf = blocks.pop()
        if len(self._buf) > self._max:
            raise SseProtocolError("upstream event exceeds the size limit")
        return blocks

    @property
    def pending(self) -> bool:
        """True when part of an event is buffered (a stream ending here was cut short)."""
        return bool(self._buf.strip(b"\n"))

    def _normalise(self, chunk: bytes) -> bytes:
        # A CR at the end of one chunk and an LF at the start of the next are one line end.
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._pending_cr = chunk.endswith(b"\r")
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def parse_block(self, block: bytes) -> SseEvent | None:
        """One raw block as an event (None for comments, retry hints, data-less blocks).

        Raises SseProtocolError when the block is not valid UTF-8.
        """
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError:
            raise SseProtocolError("upstream event is not valid UTF-8") from None
        event = "message"
        data: list[str] = []
        for line in text.split("\n"):
            if not line or line[0] == ":":
                continue  # blank (leading LF) or comment (heartbeat)
            name, sep, value = line.partition(":")
            if sep and value[:1] == " ":
                value = value[1:]
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value or "message"
            elif name == "id":
                if "\0" not in value:
                    self._last_id = value
            elif name == "retry" and value.isdigit():
                self.retry_ms = int(value)
        if not data:
            return None  # per spec an event without data is not dispatched
        return SseEvent(event, "\n".join(data), self._last_id)
