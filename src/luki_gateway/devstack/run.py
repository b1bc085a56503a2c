"""`luki-gateway dev`: the gateway in development mode (reference upstreams come later)."""

from __future__ import annotations

import sys

from ..serving import run_worker
from ..settings import Settings


def run_dev(settings: Settings) -> int:
    """Start the gateway in development mode and tell the newcomer where things are."""
    base = f"http://{settings.host}:{settings.port}"
    print(f"luki-gateway dev: gateway on {base}  (Ctrl+C to stop)\n"
          f"  liveness  {base}/healthz\n  metrics   {base}/metrics", file=sys.stderr)
    if settings.is_development:
        from ..auth.dev import dev_credentials

        creds = dev_credentials(settings)  # may point settings at the dev keys file
        settings = creds.settings
        print(f"  API key   {creds.api_key}\n  JWT       {creds.token}\n"
              f"  try: curl -X POST {base}/v1/auth/ticket -H 'Authorization: Bearer "
              f"{creds.api_key}'", file=sys.stderr)
    run_worker(settings, reuse_port=False)
    return 0
