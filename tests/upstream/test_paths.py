"""Path normalisation: dot segments, empty segments and encoded slashes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from luki_gateway.errors import ValidationFailed
from luki_gateway.upstream.paths import needs_normalising, normalise


@pytest.mark.parametrize(("raw", "expected"), [
    ("/v1/elr/items", "/v1/elr/items"),
    ("/v1/elr//items", "/v1/elr/items"),
    ("/v1/elr/./items", "/v1/elr/items"),
    ("/v1/elr/a/../items", "/v1/elr/items"),
    ("/v1/elr/a/%2e%2E/items", "/v1/elr/items"),
    ("/v1/elr/%2e/items/", "/v1/elr/items/"),
    ("/v1/elr/items/..", "/v1/elr/"),
    ("/v1/elr/items/%2e%2e", "/v1/elr/"),
    ("/v1/elr/items/%2e", "/v1/elr/items/"),
    ("/../../etc/passwd", "/etc/passwd"),
    ("/v1/elr/a%20b", "/v1/elr/a%20b"),
    ("/", "/"),
])
def test_normalise(raw: str, expected: str) -> None:
    """Dot and empty segments resolve; other encodings are kept as the client sent them."""
    assert normalise(raw) == expected


@pytest.mark.parametrize("raw", ["/v1/elr/a%2fb", "/v1/elr/a%2F..", "/v1/elr/a%5cb",
                                 "/v1/elr/a\\b"])
def test_encoded_separators_are_refused(raw: str) -> None:
    """%2F, %5C and a raw backslash are refused (400) rather than guessed at."""
    with pytest.raises(ValidationFailed):
        normalise(raw)


def test_plain_paths_skip_the_slow_path() -> None:
    """The common case is recognised without splitting."""
    assert not needs_normalising("/v1/elr/items/elr_000001")
    assert needs_normalising("/v1/elr/%2e%2e")


SEGMENT = st.sampled_from(["a", "b", ".", "..", "", "%2e", "%2e%2e", ".%2E", "x%20y"])


@given(st.lists(SEGMENT, max_size=12))
def test_no_dot_or_empty_segment_survives(segments: list[str]) -> None:
    """Whatever the mix, the result is absolute with no '.', '..' or empty inner segment."""
    out = normalise("/" + "/".join(segments))
    assert out.startswith("/")
    inner = out.strip("/").split("/") if out.strip("/") else []
    for segment in inner:
        assert segment not in ("", ".", "..")
        assert segment.lower().replace("%2e", ".") not in (".", "..")
