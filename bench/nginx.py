"""nginx as the static upstream (``return 200``) and as the C proxy (``proxy_pass``, keep-alive).

One process (``master_process off``) so its CPU time is read from a single /proc entry.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .baselines.static_upstream import BODY
from .procs import Server

_COMMON = """daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log stderr error;
worker_rlimit_nofile 20000;
events {{ worker_connections 8192; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
{body}
}}
"""

_STATIC = """  server {{
    listen 127.0.0.1:{port} backlog=1024;
    location / {{
      default_type application/json;
      return 200 '{body}';
    }}
  }}"""

_PROXY = """  upstream backend {{
    server 127.0.0.1:{upstream_port};
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=1024;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering on;
    }}
  }}"""


def nginx_binary() -> str | None:
    """Path of nginx, or None when it is not installed."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None)


def _server(name: str, port: int, core: int | None, body: str) -> Server:
    binary = nginx_binary()
    if binary is None:
        raise FileNotFoundError("nginx is not installed (make bench installs nginx-light)")
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    conf = workdir / "nginx.conf"
    conf.write_text(_COMMON.format(dir=workdir, body=body))
    return Server(name, [binary, "-c", str(conf), "-p", str(workdir)], port, core)


def static_server(port: int, core: int | None) -> Server:
    """nginx answering every request with the fixed upstream body."""
    return _server("nginx-static", port, core, _STATIC.format(port=port, body=BODY.decode()))


def proxy_server(port: int, upstream_port: int, core: int | None) -> Server:
    """nginx proxying to the upstream over a keep-alive pool."""
    return _server("nginx-proxy", port, core,
                   _PROXY.format(port=port, upstream_port=upstream_port))
