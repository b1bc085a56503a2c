"""The incremental SSE parser: any chunking gives the same events as one chunk."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from luki_gateway.upstream.sse import SseEvent, SseParser, SseProtocolError

STREAM = (b": hello\n\nevent: token\ndata: {\"text\": \"a\"}\n\n"
          b"event: tool_call\ndata: {\"x\":\ndata:  1}\nid: 7\n\n"
          b"data: plain\n\n"
          b"retry: 1500\n\nevent: done\ndata:{}\n\n")
EXPECTED = [
    SseEvent("token", '{"text": "a"}', None),
    SseEvent("tool_call", '{"x":\n 1}', "7"),
    SseEvent("message", "plain", "7"),
    SseEvent("done", "{}", "7"),
]


def _feed_all(chunks: list[bytes]) -> list[SseEvent]:
    parser = SseParser()
    out: list[SseEvent] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


def test_one_chunk() -> None:
    """Comments skipped, multi-line data joined with LF, id carried, retry read."""
    parser = SseParser()
    assert parser.feed(STREAM) == EXPECTED
    assert parser.retry_ms == 1500
    assert not parser.pending


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
def test_crlf_and_cr_line_ends(newline: bytes) -> None:
    """CRLF and lone CR end lines like LF, also when split between chunks."""
    data = STREAM.replace(b"\n", newline)
    assert _feed_all([data]) == EXPECTED
    assert _feed_all([data[i:i + 1] for i in range(len(data))]) == EXPECTED


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=12),
       newline=st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_any_chunking_gives_the_same_events(cuts: list[int], newline: bytes) -> None:
    """Splitting the byte stream anywhere (inside events, inside CRLF) changes nothing."""
    data = STREAM.replace(b"\n", newline)
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert _feed_all(chunks) == EXPECTED


def test_partial_event_is_pending() -> None:
    """An unfinished event stays buffered and is reported as pending."""
    parser = SseParser()
    assert parser.feed(b"event: token\ndata: {") == []
    assert parser.pending


def test_bad_utf8_returns_earlier_events_then_fails() -> None:
    """Events before an undecodable one are returned; the parser then stays failed."""
    parser = SseParser()
    events = parser.feed(b"data: ok\n\ndata: \xff\n\ndata: later\n\n")
    assert events == [SseEvent("message", "ok", None)]
    assert isinstance(parser.error, SseProtocolError)
    with pytest.raises(SseProtocolError):
        parser.feed(b"data: more\n\n")


def test_oversized_event_is_refused() -> None:
    """An event that never ends cannot grow the buffer past the cap."""
    parser = SseParser(max_event_bytes=100)
    with pytest.raises(SseProtocolError):
        for _ in range(20):
            parser.feed(b"data: " + b"x" * 10)
