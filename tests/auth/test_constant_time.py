"""Secret comparisons in the auth code use hmac.compare_digest, never == / != / in."""

from __future__ import annotations

import ast
from pathlib import Path

import luki_gateway.auth as auth_package

AUTH_DIR = Path(auth_package.__file__).parent
# Names that hold secret-derived values; comparing them with == would leak timing.
SECRET_WORDS = ("hash", "digest", "signature", "sig", "expected", "secret", "token", "key")
CHECKED = ("authenticator.py", "service_tokens.py", "tickets.py", "key_record.py")


def _names(node: ast.AST) -> set[str]:
    found: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            found.add(sub.id.lower())
        elif isinstance(sub, ast.Attribute):
            found.add(sub.attr.lower())
    return found


def secret_equalities(source: str) -> list[int]:
    """Line numbers of ==/!= comparisons whose operands are named like secrets."""
    lines: list[int] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        if not any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
            continue
        operands = [node.left, *node.comparators]
        if all(isinstance(o, ast.Constant) for o in operands[1:]):
            continue  # comparing to a literal (a version, a status) is not a secret check
        names = set().union(*(_names(o) for o in operands))
        if any(word in n for n in names for word in SECRET_WORDS):
            lines.append(node.lineno)
    return lines


def test_detector_flags_a_plain_comparison() -> None:
    """The detector itself finds `record.key_hash == key_hash` and `sig != expected`."""
    assert secret_equalities("ok = record.key_hash == key_hash\nbad = sig != expected\n"
                             "fine = body['v'] == 1\n") == [1, 2]


def test_no_equality_on_secret_values() -> None:
    """No == or != between operands named like secrets in the credential checkers."""
    offenders = {name: secret_equalities((AUTH_DIR / name).read_text()) for name in CHECKED}
    assert offenders == {name: [] for name in CHECKED}


def test_compare_digest_is_used_where_secrets_are_checked() -> None:
    """Each credential checker calls hmac.compare_digest."""
    for name in ("authenticator.py", "service_tokens.py", "tickets.py"):
        assert "hmac.compare_digest(" in (AUTH_DIR / name).read_text(), name
