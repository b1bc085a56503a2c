"""The Makefile's pytest step never passes silently when no test was collected."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_tests_collected_fails_with_a_message() -> None:
    """pytest's exit 5 makes `make pytest` (and so `make test` and .ci/run) fail, saying why."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "PYTEST_"))}
    proc = subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed-dev", "pytest",
         "PYTEST_ARGS=-q -p no:cacheprovider -k zz_no_such_test_zz tests/test_make.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0, proc.stdout
    assert "error: pytest collected no tests (exit 5)" in proc.stderr


def test_ci_run_is_make_test() -> None:
    """.ci/run runs `make test` and exits with its status (read, not run: it is the whole CI)."""
    script = (ROOT / ".ci" / "run").read_text()
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
    commands = [line for line in script.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert "make test" in commands
    assert commands[-1] == 'exit "$status"'
