"""FastAPI + httpx proxy (the stack the seed designs used), served by uvicorn.

Dependencies come from the ``bench`` extra only. No ``from __future__ import annotations``:
FastAPI resolves the handler's annotations at runtime.
"""

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response


def create_app(upstream: str) -> Any:
    """A FastAPI app forwarding every path to ``upstream`` through one httpx client."""
    state: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        async with httpx.AsyncClient(base_url=upstream.rstrip("/"), limits=limits) as client:
            state["client"] = client
            yield

    app = FastAPI(lifespan=lifespan)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def proxy(path: str, request: Request) -> Response:
        resp = await state["client"].request(
            request.method, "/" + path, params=request.query_params,
            content=await request.body(),
            headers={"Content-Type": request.headers.get("content-type", "")})
        return Response(content=resp.content, status_code=resp.status_code,
                        media_type=resp.headers.get("content-type"))

    return app


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(args.upstream), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)
