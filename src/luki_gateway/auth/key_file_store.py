"""The file key store (``API_KEYS_FILE``): JSON, written atomically, re-read when it changes.

Without a path it keeps keys in memory only (the embedded default of a bare ``make run``).
Writers (gateway processes and the CLI) take an exclusive lock on ``<file>.lock`` and
re-read the file before changing it, so no writer loses another's change.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from .key_record import (
    ApiKeyRecord,
    LastUsedBuffer,
    RevokedKeys,
    StoreUnavailable,
    matches_id,
)

_FORMAT_VERSION = 1
_UNREAD = (-1, -1, -1)


class FileKeyStore(LastUsedBuffer):
    """API keys in one JSON file (or in memory when ``path`` is None)."""

    def __init__(self, path: str | None) -> None:
        super().__init__()
        self._path = Path(path) if path else None
        self._records: dict[str, ApiKeyRecord] = {}
        self._stamp: tuple[int, int, int] | None = _UNREAD
        self.revoked = RevokedKeys()

    # -- reading ------------------------------------------------------------------------

    def _current_stamp(self) -> tuple[int, int, int] | None:
        assert self._path is not None
        try:
            st = self._path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read_file(self) -> dict[str, ApiKeyRecord]:
        assert self._path is not None
        try:
            raw = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(raw) if raw.strip() else {}
            records = [ApiKeyRecord.from_json(item) for item in data.get("keys", [])]
        except (ValueError, TypeError, AttributeError) as exc:
            raise StoreUnavailable(f"API keys file {self._path} is not valid: {exc}") from None
        return {r.key_hash: r for r in records}

    def _refresh(self) -> None:
        """Re-read the file when its mtime/size/inode changed (revocations by other writers)."""
        if self._path is None:
            return
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return
        self._records = self._read_file()
        self._stamp = stamp
        self._note_revoked()

    def _note_revoked(self) -> None:
        self.revoked.add(h for h, r in self._records.items() if r.revoked)

    async def get(self, key_hash: str) -> ApiKeyRecord | None:
        """The record for a hash, re-reading the file first if it changed."""
        return self.cached(key_hash)

    def cached(self, key_hash: str) -> ApiKeyRecord | None:
        """The record for a hash (the file is re-read first if it changed)."""
        self._refresh()
        return self._records.get(key_hash)

    async def list(self) -> list[ApiKeyRecord]:
        """Every record, oldest first."""
        self._refresh()
        return sorted(self._records.values(), key=lambda r: r.created_at)

    # -- writing ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        assert self._path is not None
        self._path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self._path.with_name(self._path.name + ".lock")
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _write_file(self, records: dict[str, ApiKeyRecord]) -> None:
        assert self._path is not None
        body = {"version": _FORMAT_VERSION,
                "keys": [r.as_json() for r in sorted(records.values(),
                                                     key=lambda r: r.created_at)]}
        fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=f".{self._path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(body, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self._path)  # atomic: readers see the old or the new file
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _modify(self, change: Callable[[dict[str, ApiKeyRecord]], Any]) -> Any:
        """Apply ``change`` to the freshest records and persist them (under the lock)."""
        if self._path is None:
            return change(self._records)
        with self._locked():
            records = self._read_file()
            result = change(records)
            self._write_file(records)
            self._records = records
            self._stamp = self._current_stamp()
        return result

    async def _write(self, change: Callable[[dict[str, ApiKeyRecord]], Any]) -> Any:
        """:meth:`_modify` in a worker thread. The records it re-read may hold another
        writer's revocations (and the file stamp is current now, so no later re-read will
        notice them): note them here, on the loop, where the listeners run."""
        result = await asyncio.to_thread(self._modify, change)
        self._note_revoked()
        return result

    async def add(self, record: ApiKeyRecord) -> None:
        """Store a new record."""

        def change(records: dict[str, ApiKeyRecord]) -> None:
            records[record.key_hash] = record

        await self._write(change)

    async def revoke(self, key_id: str) -> ApiKeyRecord | None:
        """Revoke by id or hash; None when no record (or more than one) matches."""

        def change(records: dict[str, ApiKeyRecord]) -> ApiKeyRecord | None:
            found = [r for r in records.values() if matches_id(r, key_id)]
            if len(found) != 1:
                return None
            revoked = found[0] if found[0].revoked else found[0].revoked_now(time.time())
            records[revoked.key_hash] = revoked
            return revoked

        result: ApiKeyRecord | None = await self._write(change)
        return result

    async def flush_last_used(self) -> None:
        """Write the pending last-used times in one locked rewrite."""
        pending = self._take_pending()
        if not pending:
            return

        def change(records: dict[str, ApiKeyRecord]) -> None:
            for key_hash, when in pending.items():
                record = records.get(key_hash)
                if record is not None and (record.last_used_at or 0) < when:
                    records[key_hash] = replace(record, last_used_at=when)

        await self._write(change)

    async def poll_revocations(self) -> None:
        """Re-read the file if it changed (a revocation written by another process)."""
        self._refresh()

    async def close(self) -> None:
        """Flush pending last-used times."""
        await self.flush_last_used()
