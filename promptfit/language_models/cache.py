"""Response caches keyed by the full request.

Re-running the same evaluation must cost no LM calls. The key is a SHA-256 of the canonical
JSON of everything that changes the answer (model, endpoint, messages, output schema,
sampling parameters); the API key is never part of it and never stored.
The in-memory cache is an LRU; the optional disk store is a SQLite file (atomic, safe
against crashes, shareable between runs) accessed from a worker thread so it never blocks the
event loop.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import anyio.to_thread

__all__ = ["ResponseCache", "request_key"]


def request_key(request: dict[str, Any]) -> str:
    """Stable hash of a request (dict order and whitespace do not matter)."""
    text = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ResponseCache:
    """Memory LRU plus an optional SQLite store of LM replies.

    Args:
        max_entries: Size of the in-memory LRU.
        path: Optional SQLite file; replies persist across processes.
    """

    def __init__(self, max_entries: int = 100_000, path: str | Path | None = None) -> None:
        self.max_entries = max_entries
        self.path = Path(path) if path is not None else None
        self._memory: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._db: sqlite3.Connection | None = None
        self._db_lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            assert self.path is not None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT)")
            self._db = db
        return self._db

    def _disk_get(self, key: str) -> dict[str, Any] | None:
        with self._db_lock:
            row = (
                self._connection()
                .execute("SELECT value FROM responses WHERE key = ?", (key,))
                .fetchone()
            )
        return json.loads(row[0]) if row else None

    def _disk_put(self, key: str, value: dict[str, Any]) -> None:
        with self._db_lock:
            self._connection().execute(
                "INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)",
                (key, json.dumps(value, ensure_ascii=False)),
            )

    def _remember(self, key: str, value: dict[str, Any]) -> None:
        self._memory[key] = value
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_entries:
            self._memory.popitem(last=False)

    async def get(self, key: str) -> dict[str, Any] | None:
        value = self._memory.get(key)
        if value is not None:
            self._memory.move_to_end(key)
            return value
        if self.path is None:
            return None
        value = await anyio.to_thread.run_sync(self._disk_get, key)
        if value is not None:
            self._remember(key, value)
        return value

    async def put(self, key: str, value: dict[str, Any]) -> None:
        self._remember(key, value)
        if self.path is not None:
            await anyio.to_thread.run_sync(self._disk_put, key, value)

    def clear(self) -> None:
        self._memory.clear()
        if self.path is not None:
            with self._db_lock:
                self._connection().execute("DELETE FROM responses")

    def __len__(self) -> int:
        return len(self._memory)
