"""The floor for fan-out: the naive hub's connections, but a broadcast that encodes one
prepared frame and hands the same bytes to every transport (no await, no per-socket work).
"""

from __future__ import annotations

import json
import struct

from aiohttp import web

from .naive_hub import create_app


def ws_text_frame(payload: bytes) -> bytes:
    """One unmasked, final WebSocket text frame (server to client)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + struct.pack("!H", n) + payload
    return bytes((0x81, 127)) + struct.pack("!Q", n) + payload


def sse_chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk carrying an SSE event (the streams are chunked)."""
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


async def raw_broadcast(request: web.Request, channel: str,
                        targets: list[web.StreamResponse], data: object) -> int:
    """Encode each frame kind once; write the same bytes to every live transport."""
    ws_frame = ws_text_frame(json.dumps({"type": "event", "channel": channel,
                                         "data": data}).encode())
    sse_frame = sse_chunk(f"data: {json.dumps(data)}\n\n".encode())
    sent = 0
    for target in targets:
        req = target._req  # the subscriber's own request, which owns its transport
        transport = req.transport if req is not None else None
        if transport is None or transport.is_closing():
            continue
        transport.write(ws_frame if isinstance(target, web.WebSocketResponse) else sse_frame)
        sent += 1
    return sent


if __name__ == "__main__":
    from .serve import parse_args, run

    run(create_app(raw_broadcast), parse_args().port)
