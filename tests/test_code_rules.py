"""The package keeps the shared rules: typed app/request keys, no print, no vague names."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "luki_gateway"
VAGUE = ("Manager", "Helper", "Utils")


def modules() -> list[tuple[Path, ast.Module]]:
    """Every module of the package, parsed."""
    return [(path, ast.parse(path.read_text(), str(path))) for path in sorted(SRC.rglob("*.py"))]


def _holder(node: ast.expr) -> str | None:
    """'app' / 'request' for `app[...]`, `request.app[...]`, `self.app[...]`; else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def test_no_string_keys_into_app_or_request() -> None:
    """app[...] and request[...] use web.AppKey / web.RequestKey, never a string."""
    found = [f"{path.relative_to(SRC)}:{node.lineno}"
             for path, tree in modules() for node in ast.walk(tree)
             if isinstance(node, ast.Subscript) and _holder(node.value) in ("app", "request")
             and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)]
    assert found == []


def test_no_print_outside_the_cli() -> None:
    """Only cli modules print; everything else logs through structlog."""
    found = [f"{path.relative_to(SRC)}:{node.lineno}"
             for path, tree in modules() if path.name != "cli.py" for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
             and node.func.id == "print"]
    assert found == []


def test_no_vague_class_names() -> None:
    """Classes are named for what they are in the gateway, not Manager/Helper/Utils."""
    found = [f"{path.relative_to(SRC)}:{node.name}"
             for path, tree in modules() for node in ast.walk(tree)
             if isinstance(node, ast.ClassDef) and any(v in node.name for v in VAGUE)]
    assert found == []


def _is_fixture(func: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """True for a function decorated with pytest.fixture (called or not)."""
    for dec in func.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        if (isinstance(target, ast.Attribute) and target.attr == "fixture") or (
                isinstance(target, ast.Name) and target.id == "fixture"):
            return True
    return False


def test_every_test_and_fixture_has_a_docstring() -> None:
    """Each test and fixture says in one line what it shows."""
    tests = Path(__file__).resolve().parent
    found = []
    for path in sorted(tests.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and (node.name.startswith("test_") or _is_fixture(node))
                    and not ast.get_docstring(node)):
                found.append(f"{path.relative_to(tests)}:{node.name}")
    assert found == []
