"""Read the tagged JSON documents promptfit writes (programs, variables, manifests, backups).

Every file promptfit writes is a JSON object with a ``format`` tag and an integer ``version``.
:func:`parse_document` is the one place that checks both, so every reader refuses a foreign,
corrupt or too-new file the same way; each caller wraps the reason in its own typed error
with the fix that fits (delete a corrupt backup, upgrade promptfit, ...).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["DocumentError", "parse_document"]


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
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DocumentError(f"is not valid JSON ({error}); the file is corrupt") from error
    if not isinstance(data, dict) or data.get("format") != expected_format:
        tag = data.get("format") if isinstance(data, dict) else None
        raise DocumentError(f"is not a {expected_format} file (format tag: {tag!r})")
    version = data.get("version")
    if not isinstance(version, int) or version > max_version:
        raise DocumentError(
            f"has format version {version!r}; this promptfit reads versions up to "
            f"{max_version}. Upgrade promptfit to read it"
        )
    return data
