"""Response caches keyed by the full request.

Re-running the same evaluation, resuming a killed fit or running the same fit again must cost
no LM call that was already paid for. The key is a SHA-256 of the canonical JSON of everything
that changes the answer (model, endpoint, messages, output schema, sampling parameters); the
API key is never part of it and never stored.

By default (``LanguageModel(cache=True)``) replies live in an in-memory LRU *and* in a SQLite
file in promptfit's per-user cache directory (``~/.cache/promptfit/responses.sqlite`` on Linux;
``PROMPTFIT_CACHE_DIR`` moves it), bounded in size with least-recently-used eviction, as DSPy
does with its disk cache. SQLite is atomic and safe against crashes and against several
processes sharing the file; it is accessed from a worker thread so it never blocks the event
loop. A store that cannot be used (unwritable, not a database, a full disk) is reported once
and bypassed: caching is an optimisation and must never end a fit.

Each stored reply also records what producing it cost and *where in a fit* it was produced
(:data:`call_origin`), so that a fit resumed after a crash logs the calls it had paid for
before the crash exactly as an uninterrupted run would, without paying for them again (see
:meth:`~promptfit.language_models.LanguageModel.generate`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import warnings
from collections import OrderedDict
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import anyio.to_thread

from promptfit.language_models.native_build import cache_root

__all__ = [
    "DEFAULT_MAX_DISK_BYTES",
    "ResponseCache",
    "call_origin",
    "default_cache_path",
    "request_key",
]

logger = logging.getLogger("promptfit")

DEFAULT_MAX_DISK_BYTES = 1 << 30
"""1 GiB of stored replies (``PROMPTFIT_CACHE_MAX_BYTES`` overrides it): about a million short
structured replies. The oldest-used entries go first when the file outgrows it."""

call_origin: ContextVar[str | None] = ContextVar("promptfit_call_origin", default=None)
"""Where in a fit the current LM calls are made (``"<fit run id>:<epoch>:<step>"``), set by the
training loop; ``None`` outside a fit."""


def default_cache_path() -> Path:
    """The shared on-disk response cache: ``<promptfit cache dir>/responses.sqlite``.

    Delete the file (or call :meth:`ResponseCache.clear`) to empty it.
    """
    return cache_root() / "responses.sqlite"


def request_key(request: dict[str, Any]) -> str:
    """Stable hash of a request (dict order and whitespace do not matter)."""
    text = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _max_bytes_from_env() -> int:
    try:
        value = int(os.environ.get("PROMPTFIT_CACHE_MAX_BYTES", DEFAULT_MAX_DISK_BYTES))
    except ValueError:
        return DEFAULT_MAX_DISK_BYTES
    return value if value > 0 else DEFAULT_MAX_DISK_BYTES


class ResponseCache:
    """Memory LRU plus an optional, size-bounded SQLite store of LM replies.

    Args:
        max_entries: Size of the in-memory LRU.
        path: Optional SQLite file; replies persist across processes. A path that cannot be
            used as a database is reported once (a warning) and then ignored.
        max_disk_bytes: Bound on the stored replies' total size; least recently used entries
            are evicted beyond it. Defaults to ``PROMPTFIT_CACHE_MAX_BYTES`` or 1 GiB.
    """

    def __init__(
        self,
        max_entries: int = 100_000,
        path: str | Path | None = None,
        max_disk_bytes: int | None = None,
    ) -> None:
        self.max_entries = max_entries
        # expanduser: cache="~/replies.sqlite" must not create a directory named "~" here.
        self.path = Path(path).expanduser() if path is not None else None
        self.max_disk_bytes = max_disk_bytes or _max_bytes_from_env()
        self._memory: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._db: sqlite3.Connection | None = None
        self._db_lock = threading.Lock()
        self._disabled = False
        self._written_since_check = 0
        # Keys served from memory since the last disk write: their "last used" time on disk is
        # brought up to date with that write, so a memory hit costs no trip to SQLite and the
        # disk's eviction order still sees it.
        self._touched: set[str] = set()

    # -- disk --------------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            assert self.path is not None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30.0
            )
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT)"
                )
                columns = {row[1] for row in db.execute("PRAGMA table_info(responses)")}
                # Files written before the size bound existed gain its bookkeeping columns.
                for column, kind in (("size", "INTEGER DEFAULT 0"), ("used", "REAL DEFAULT 0")):
                    if column not in columns:
                        try:
                            db.execute(f"ALTER TABLE responses ADD COLUMN {column} {kind}")
                        except sqlite3.OperationalError as error:
                            # Another connection (process, or LM sharing the file) added it
                            # between our look and our ALTER.
                            if "duplicate column" not in str(error):
                                raise
                db.execute("CREATE INDEX IF NOT EXISTS responses_used ON responses (used)")
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def _disable(self, error: BaseException) -> None:
        """Stop using the disk store after its first failure, with one warning."""
        if self._disabled:
            return
        self._disabled = True
        message = (
            f"The response cache {self.path} cannot be used ({type(error).__name__}: {error}); "
            "promptfit goes on without it (replies are still cached in memory). Fix or delete "
            "the file, or pass LanguageModel(cache=<another path>) or cache=False."
        )
        logger.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)

    def _disk_get(self, key: str) -> dict[str, Any] | None:
        with self._db_lock:
            db = self._connection()
            row = db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
            if row is not None:
                db.execute("UPDATE responses SET used = ? WHERE key = ?", (time.time(), key))
        return json.loads(row[0]) if row else None

    def _disk_put(self, key: str, value: dict[str, Any]) -> None:
        text = json.dumps(value, ensure_ascii=False)
        with self._db_lock:
            db = self._connection()
            now = time.time()
            if self._touched:
                touched, self._touched = self._touched, set()
                db.executemany(
                    "UPDATE responses SET used = ? WHERE key = ?", [(now, k) for k in touched]
                )
            db.execute(
                "INSERT OR REPLACE INTO responses (key, value, size, used) VALUES (?, ?, ?, ?)",
                (key, text, len(text), now),
            )
            self._written_since_check += len(text)
            # Summing the sizes is a table scan: do it after every ~1 % of the bound written.
            if self._written_since_check * 100 >= self.max_disk_bytes:
                self._written_since_check = 0
                self._evict(db)

    def _evict(self, db: sqlite3.Connection) -> None:
        """Drop least recently used entries until the store is under 90 % of its bound."""
        total = db.execute("SELECT COALESCE(SUM(size), 0) FROM responses").fetchone()[0]
        if total <= self.max_disk_bytes:
            return
        excess = total - int(self.max_disk_bytes * 0.9)
        freed = 0
        doomed: list[str] = []
        for key, size in db.execute("SELECT key, size FROM responses ORDER BY used"):
            doomed.append(key)
            freed += size or 0
            if freed >= excess:
                break
        db.executemany("DELETE FROM responses WHERE key = ?", [(k,) for k in doomed])

    async def _on_disk(self, fn: Any, *args: Any) -> Any:
        if self.path is None or self._disabled:
            return None
        try:
            return await anyio.to_thread.run_sync(fn, *args)
        except (sqlite3.Error, OSError, ValueError) as error:
            self._disable(error)
            return None

    # -- public ------------------------------------------------------------------------------
    def _remember(self, key: str, value: dict[str, Any]) -> None:
        self._memory[key] = value
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_entries:
            self._memory.popitem(last=False)

    async def get(self, key: str) -> dict[str, Any] | None:
        value = self._memory.get(key)
        if value is not None:
            self._memory.move_to_end(key)
            if self.path is not None:
                self._touched.add(key)
            return value
        value = await self._on_disk(self._disk_get, key)
        if value is not None:
            self._remember(key, value)
        return value

    async def put(self, key: str, value: dict[str, Any]) -> None:
        self._remember(key, value)
        await self._on_disk(self._disk_put, key, value)

    def clear(self) -> None:
        """Forget every reply, in memory and on disk."""
        self._memory.clear()
        if self.path is not None and not self._disabled:
            with self._db_lock:
                try:
                    self._connection().execute("DELETE FROM responses")
                except (sqlite3.Error, OSError) as error:
                    self._disable(error)

    def close(self) -> None:
        """Close the SQLite connection (it reopens on the next use)."""
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __len__(self) -> int:
        return len(self._memory)
