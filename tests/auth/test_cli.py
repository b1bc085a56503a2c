"""`keys create|list|revoke` and `token` on both stores; created keys work in the real app."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from luki_gateway.auth.cli import parse_duration
from luki_gateway.cli import main

from .probe import Probe


@pytest.fixture
def store_env(backend: str, backend_redis_url: str, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the CLI at the same store the probe gateway uses (file or Redis)."""
    if backend_redis_url:
        monkeypatch.setenv("REDIS_URL", backend_redis_url)
    else:
        monkeypatch.setenv("API_KEYS_FILE", str(tmp_path / "api_keys.json"))


def run_sync(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; (exit status, stdout, stderr)."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in a thread (it runs its own event loop), as a separate process would."""
    return await asyncio.to_thread(run_sync, capsys, *argv)


async def test_create_list_revoke_round_trip(store_env: None, probe: Callable[..., Any],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A created key works in the gateway; list shows it masked; revoke (by id) ends it."""
    status, out, err = await run(capsys, "keys", "create", "--owner", "bob", "--scope",
                           "chat:write", "--scope", "elr:read", "--expires", "30d")
    assert status == 0
    key = out.strip()
    assert key.startswith("sk_live_") and "\n" not in key
    assert key not in err and "not shown again" in err
    p: Probe = await probe()
    resp = await p.client.post("/t/chat", headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200
    assert (await resp.json())["principal"]["scopes"] == ["chat:write", "elr:read"]

    status, out, _ = await run(capsys, "keys", "list")
    assert status == 0 and "bob" in out and key[-4:] in out and key not in out
    assert "active" in out
    status, out, _ = await run(capsys, "keys", "list", "--json")
    (row,) = json.loads(out)
    assert row["owner"] == "bob" and row["status"] == "active" and row["expires_at"]
    assert row["last_used_at"] is None

    status, _, err = await run(capsys, "keys", "revoke", row["id"])
    assert status == 0 and row["id"] in err
    status, out, _ = await run(capsys, "keys", "list", "--json")
    assert json.loads(out)[0]["status"] == "revoked"


async def test_revoke_by_whole_key(store_env: None, probe: Callable[..., Any],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`keys revoke sk_...` revokes that key; unknown ids exit 1."""
    _, out, _ = await run(capsys, "keys", "create", "--owner", "carol", "--scope", "chat:write",
                    "--env", "test", "--json")
    created = json.loads(out)
    assert created["key"].startswith("sk_test_") and created["env"] == "test"
    assert (await run(capsys, "keys", "revoke", "ffffffffffffffff"))[0] == 1
    assert (await run(capsys, "keys", "revoke", created["key"]))[0] == 0
    p: Probe = await probe()
    resp = await p.client.post("/t/chat", headers={"Authorization": f"Bearer {created['key']}"})
    assert resp.status == 401


def test_create_without_a_store_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """No API_KEYS_FILE and no REDIS_URL: the key would vanish, so exit 2 with a hint."""
    status, out, err = run_sync(capsys, "keys", "create", "--owner", "x")
    assert status == 2 and out == "" and "API_KEYS_FILE" in err


def test_bad_expiry_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--expires must be a duration."""
    with pytest.raises(SystemExit):
        main(["keys", "create", "--owner", "x", "--expires", "soon"])
    capsys.readouterr()
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("90") == 90


async def test_token_command(probe: Callable[..., Any],
                             capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`token` mints a dev JWT the gateway accepts; refused in production."""
    status, out, _ = await run(capsys, "token", "--sub", "alice", "--scope", "chat:write")
    assert status == 0
    p: Probe = await probe()
    resp = await p.client.post("/t/chat", headers={"Authorization": f"Bearer {out.strip()}"})
    assert (await resp.json())["principal"]["subject"] == "alice"
    monkeypatch.setenv("ENVIRONMENT", "production")
    status, out, err = await run(capsys, "token", "--sub", "alice")
    assert status == 1 and out == "" and "production" in err
    # Staging accepts HS256 only with a secret of its own: not a token it would refuse.
    monkeypatch.setenv("ENVIRONMENT", "staging")
    status, out, err = await run(capsys, "token", "--sub", "alice")
    assert status == 1 and out == "" and "default JWT_SECRET" in err


@pytest.mark.parametrize("flags", [("--owner", ""), ("--owner", "x\ny"),
                                   ("--owner", "a", "--scope", "elr:read admin:write"),
                                   ("--owner", "a", "--scope", "")])
def test_owners_and_scopes_that_cannot_be_forwarded_are_refused(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, flags: tuple[str, ...]) -> None:
    """An owner becomes X-LUKi-Principal and scopes the space-separated X-LUKi-Scopes: a
    blank owner, a control character or a scope with a space is a usage error, not a key
    that forwards an empty principal or a scope nobody granted."""
    keys_file = tmp_path / "keys.json"
    with pytest.raises(SystemExit) as exited:
        main(["keys", "create", "--keys-file", str(keys_file), *flags])
    assert exited.value.code == 2
    assert "error: argument" in capsys.readouterr().err
    assert not keys_file.exists()


def test_an_unusable_store_is_one_line(capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    """Redis down or a keys file that is not one: exit 1 and one line, no traceback."""
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for store in (["--redis-url", "redis://127.0.0.1:9/0"], ["--keys-file", str(bad)]):
        with pytest.raises(SystemExit) as exited:
            main(["keys", "list", *store])
        assert exited.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith("luki-gateway: key store unavailable: ")
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_an_expiry_beyond_ten_years_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    """--expires 999999999d is refused (exit 2) before anything is stored: such a key
    could never be shown with its expiry; ten years is accepted."""
    keys_file = tmp_path / "keys.json"
    with pytest.raises(SystemExit) as exited:
        main(["keys", "create", "--keys-file", str(keys_file), "--owner", "x",
              "--expires", "999999999d"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument --expires" in err and "at most" in err
    assert not keys_file.exists()
    status, out, _ = run_sync(capsys, "keys", "create", "--keys-file", str(keys_file),
                              "--owner", "x", "--expires", "3650d", "--json")
    assert status == 0 and json.loads(out)["expires_at"].startswith("20")
    with pytest.raises(SystemExit):
        main(["token", "--ttl", "99999999999"])
    capsys.readouterr()


async def test_a_stored_expiry_out_of_range_is_listed_raw(
        store_env: None, auth_settings: Callable[..., Any],
        capsys: pytest.CaptureFixture[str]) -> None:
    """A record whose expiry no date can show (stored by an older CLI) is listed with the
    raw timestamp, in the table and in JSON, also once revoked; nothing crashes."""
    from luki_gateway.auth.api_keys import open_store
    from luki_gateway.auth.key_record import generate_key, new_record

    huge = 999999999 * 86400 + 1.7e9
    store = open_store(auth_settings())
    try:
        await store.add(new_record(generate_key(), pepper="p", owner="huge", scopes=(),
                                   expires_at=huge))
    finally:
        await store.close()
    status, out, err = await run(capsys, "keys", "list")
    assert status == 0 and "huge" in out and "Traceback" not in err
    status, out, _ = await run(capsys, "keys", "list", "--json")
    (row,) = json.loads(out)
    assert status == 0 and row["expires_at"] == str(huge)
    status, out, _ = await run(capsys, "keys", "revoke", row["id"], "--json")
    assert status == 0 and json.loads(out)["expires_at"] == str(huge)
    status, out, _ = await run(capsys, "keys", "list", "--json")
    assert status == 0 and json.loads(out)[0]["status"] == "revoked"


@pytest.mark.parametrize("argv", [["keys", "list"], ["keys", "list", "--json"],
                                  ["keys", "revoke", "0123456789abcdef"]])
def test_list_and_revoke_without_a_store_say_so(capsys: pytest.CaptureFixture[str],
                                                argv: list[str]) -> None:
    """No API_KEYS_FILE and no REDIS_URL: list and revoke say there is no key store
    (exit 2) as create does, not "no keys" (exit 0) or "no such key" (exit 1)."""
    status, out, err = run_sync(capsys, *argv)
    assert status == 2 and out == "" and "no key store" in err and "API_KEYS_FILE" in err


@pytest.mark.parametrize("sub", ["", "   ", "a\nb", "x" * 257])
def test_token_refuses_a_subject_the_gateway_would_refuse(
        capsys: pytest.CaptureFixture[str], sub: str) -> None:
    """`token --sub ""` (or blank, control characters, over 256) is a usage error, not a
    token every gateway answers with 401."""
    with pytest.raises(SystemExit) as exited:
        main(["token", "--sub", sub])
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and "error: argument --sub" in err
