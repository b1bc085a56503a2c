"""The reference agent as its own process: ``python -m bench.agent_server --port P``."""

from __future__ import annotations

import argparse

from luki_gateway.devstack.agent import create_agent_app

from .baselines.serve import run

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--tokens-per-s", type=float, default=20.0)
    args = parser.parse_args()
    run(create_agent_app(tokens=args.tokens, tokens_per_s=args.tokens_per_s), args.port)
