"""How every aiohttp baseline is run: uvloop when installed, no access log, one process."""

from __future__ import annotations

import argparse
import asyncio
import resource

from aiohttp import web


def parse_args(extra: list[tuple[str, type]] | None = None) -> argparse.Namespace:
    """``--port`` plus the baseline's own options."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    for name, kind in extra or []:
        parser.add_argument(f"--{name}", type=kind, required=True)
    return parser.parse_args()


def run(app: web.Application, port: int) -> None:
    """Serve ``app`` on 127.0.0.1:port the way the gateway serves (uvloop, no access log)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                shutdown_timeout=0.5, handler_cancellation=True)
