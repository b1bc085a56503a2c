"""The fastest static upstream Python can offer (used only when nginx is missing).

A raw asyncio protocol answering every request with the same 200: no parsing beyond
finding the end of the request head (the benchmark only sends GETs without bodies).
"""

from __future__ import annotations

import asyncio
from typing import cast

BODY = b'{"ok":true,"from":"upstream","pad":"0123456789abcdef"}'
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


class _Static(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence the cast.
        self.transport = cast(asyncio.Transport, transport)
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        count = self.buf.count(b"\r\n\r\n")
        if count:
            self.buf = self.buf[self.buf.rindex(b"\r\n\r\n") + 4:]
            self.transport.write(RESPONSE * count)


async def _main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Static, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    """Entry point: ``python -m bench.baselines.static_upstream --port P``."""
    from .serve import parse_args

    args = parse_args()
    try:
        import uvloop

        uvloop.run(_main(args.port))
    except ImportError:
        asyncio.run(_main(args.port))


if __name__ == "__main__":
    main()
