"""The one atomic-write helper used for every file promptfit writes.

A crash (or SIGKILL) at any moment leaves either the old file or the new one on disk, never a
half-written mix: the data goes to a temporary file in the same directory, is flushed and
fsynced, then moved over the target with :func:`os.replace`, and the directory entry is
fsynced too so the rename itself survives a power loss.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "durable_append_text",
    "fsync_dir",
]


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Flush a directory entry to disk (no-op on platforms that cannot open directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably; returns the resolved path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    fsync_dir(target.parent)
    return target


def durable_append_text(path: str | os.PathLike[str], text: str) -> None:
    """Append UTF-8 ``text`` (whole lines) to ``path`` and fsync it before returning.

    For logs that grow by a line per epoch, where rewriting the file each time would be
    wasteful. An append is not atomic: a crash (or a full disk) mid-write can leave a torn last
    line, so readers of such a file drop an unterminated last line (see ``CSVLogger`` and
    ``PredictionLogger``).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    created = not target.exists()
    with target.open("a", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    if created:
        fsync_dir(target.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Serialise ``obj`` as JSON (strict: no NaN) and write it atomically."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False, sort_keys=False)
    return atomic_write_text(path, text + "\n")
