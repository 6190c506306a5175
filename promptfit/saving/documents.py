"""Read the tagged JSON documents promptfit writes (programs, variables, manifests, backups).

Every file promptfit writes is a JSON object with a ``format`` tag and an integer ``version``.
:func:`parse_document` is the one place that checks both, so every reader refuses a foreign,
corrupt or too-new file the same way; each caller wraps the reason in its own typed error
with the fix that fits (delete a corrupt backup, upgrade promptfit, ...).
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from promptfit.data.adapters import check_text
from promptfit.errors import DataError

__all__ = ["MAX_DOCUMENT_BYTES", "DocumentError", "parse_document", "read_regular_file"]

# Larger than any file promptfit writes by orders of magnitude; a bigger "program" or "backup"
# is hostile or broken, and reading it would only exhaust memory.
MAX_DOCUMENT_BYTES = 512 * 1024 * 1024


class DocumentError(ValueError):
    """Why a document cannot be read; ``str(error)`` completes "<path> ..."."""


def parse_document(raw: str | bytes, expected_format: str, max_version: int) -> dict[str, Any]:
    """Decode ``raw`` and check its format tag and version.

    Raises:
        DocumentError: not valid JSON, another format, or a version newer than
            ``max_version`` (the message says to upgrade promptfit).
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        data = json.loads(text)
    except (UnicodeDecodeError, ValueError) as error:  # JSONDecodeError, 5000-digit integers
        raise DocumentError(
            f"is not valid JSON ({str(error)[:200]}); the file is corrupt"
        ) from error
    except RecursionError:
        raise DocumentError(
            "nests JSON too deeply to be a promptfit file; the file is corrupt"
        ) from None
    try:
        # "\ud800" is valid JSON but no valid text: it cannot be encoded to send to a model,
        # hash for the cache or write back, so it would fail later, after LM calls.
        check_text(data, "it")
    except DataError as error:
        raise DocumentError(f"{str(error)[3:].rstrip('.')}; the file is corrupt") from None
    if not isinstance(data, dict) or data.get("format") != expected_format:
        tag = data.get("format") if isinstance(data, dict) else None
        raise DocumentError(f"is not a {expected_format} file (format tag: {tag!r:.80})")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DocumentError(
            f"has an invalid format version {version!r:.40} (a positive integer is expected); "
            "the file is corrupt"
        )
    if version > max_version:
        raise DocumentError(
            f"has format version {version!r}; this promptfit reads versions up to "
            f"{max_version}. Upgrade promptfit to read it"
        )
    return data


def read_regular_file(path: str | os.PathLike[str], max_bytes: int = MAX_DOCUMENT_BYTES) -> bytes:
    """The bytes of ``path``, which must be a regular file (never blocks on a FIFO or device).

    The file is opened with ``O_NONBLOCK`` and checked with ``fstat`` on the open descriptor
    (no race with a swap between check and open): a FIFO named ``program.json`` would
    otherwise block the reader forever, and ``/dev/zero`` would never end.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        OSError: ``path`` is not a regular file, is larger than ``max_bytes``, or unreadable.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path} is not a regular file")
        if info.st_size > max_bytes:
            raise OSError(f"{path} is larger than {max_bytes} bytes")
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > max_bytes:
                raise OSError(f"{path} is larger than {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
