"""luki-gateway: a streaming-first API gateway for the LUKi assistant."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("luki-gateway")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
