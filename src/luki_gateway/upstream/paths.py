"""Path normalisation: a proxied path can never climb out of its route's prefix.

Works on the raw (still percent-encoded) path, so what the upstream receives is exactly
what the client sent, minus dot segments and empty segments. Encoded slashes and
backslashes are refused: upstreams disagree on whether ``%2F`` separates segments.
"""

from __future__ import annotations

from urllib.parse import unquote

from ..errors import ValidationFailed


def needs_normalising(raw_path: str) -> bool:
    """Cheap test for the common case: nothing encoded, no dot or empty segment."""
    return "%" in raw_path or "/." in raw_path or "//" in raw_path or "\\" in raw_path


def normalise(raw_path: str) -> str:
    """Resolve ``.``/``..`` (encoded or not) and collapse ``//``; 400 on encoded slashes."""
    if not needs_normalising(raw_path):
        return raw_path
    stack: list[str] = []
    segments = raw_path.split("/")
    for segment in segments:
        decoded = unquote(segment) if "%" in segment else segment
        if "/" in decoded or "\\" in decoded:
            raise ValidationFailed("encoded slash or backslash in path")
        if decoded in ("", "."):
            continue
        if decoded == "..":
            if stack:
                stack.pop()
            continue
        stack.append(segment)
    last = segments[-1]
    last = unquote(last) if "%" in last else last
    trailing = "/" if stack and last in ("", ".", "..") and raw_path != "/" else ""
    return "/" + "/".join(stack) + trailing
