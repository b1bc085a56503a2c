"""The chat body's marshmallow-free fast path agrees with the schema on every body."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from luki_gateway.chat.schema import chat_schema, plain_chat_body
from luki_gateway.settings import ChatSettings

SETTINGS = ChatSettings(max_message_chars=20)
SCHEMA = chat_schema(SETTINGS)

values = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=25),
                   st.binary(max_size=3), st.lists(st.integers(), max_size=2),
                   st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
bodies = st.one_of(
    st.dictionaries(st.sampled_from(["message", "user_id", "context", "other"]), values),
    st.fixed_dictionaries({"message": st.text(max_size=25)},
                          optional={"user_id": st.one_of(st.none(), st.text(max_size=130))}),
    values,
)


@settings(max_examples=400, deadline=None)
@given(body=bodies)
def test_fast_path_agrees_with_schema(body: Any) -> None:
    """Whenever the fast path answers, the schema gives the same; it defers on the rest."""
    fast = plain_chat_body(body, SETTINGS.max_message_chars)
    try:
        loaded = SCHEMA.load(body) if isinstance(body, dict) else None
    except ValidationError:
        loaded = None
    if fast is not None:
        assert fast == loaded


def test_fast_path_takes_the_usual_bodies() -> None:
    """The common shapes never reach marshmallow."""
    assert plain_chat_body({"message": "hi"}, 20) == {
        "message": "hi", "user_id": None, "context": None}
    assert plain_chat_body({"message": "hi", "user_id": "bob"}, 20) == {
        "message": "hi", "user_id": "bob", "context": None}
    assert plain_chat_body({"message": "hi", "context": {}}, 20) is None
    assert plain_chat_body({"message": ""}, 20) is None
    assert plain_chat_body({"message": "x" * 21}, 20) is None
