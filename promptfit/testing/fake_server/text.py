"""Text and JSON helpers shared by the brains and the HTTP app (no state, no I/O)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["canonical_json"]


def _message_text(message: Mapping[str, Any]) -> str:
    """Text of one chat message; handles both string and multi-part contents."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            p.get("text", "")
            for p in content
            if isinstance(p, dict) and isinstance(p.get("text"), str)
        ]
        return "\n".join(parts)
    return ""


def _iter_json_objects(text: str) -> Iterator[dict[str, Any]]:
    """Yield the top-level JSON objects embedded in ``text``, left to right.

    Scanning resumes after each decoded object, so objects nested inside another one
    are not yielded on their own (the caller walks them if it needs to).
    """
    decoder = json.JSONDecoder()
    pos = text.find("{")
    while pos != -1:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            pos = text.find("{", pos + 1)
            continue
        if isinstance(value, dict):
            yield value
        pos = text.find("{", end)


def _is_schema(obj: Mapping[str, Any]) -> bool:
    return "properties" in obj


def _walk_dicts(value: Any) -> Iterator[dict[str, Any]]:
    """Yield ``value`` and every dict nested in it, skipping JSON schemas entirely."""
    if isinstance(value, dict):
        if _is_schema(value):
            return
        yield value
        for child in value.values():
            yield from _walk_dicts(child)
    elif isinstance(value, list):
        for child in value:
            yield from _walk_dicts(child)


def _strings(value: Any) -> Iterator[str]:
    """Yield every string in a JSON value, depth first, in document order."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for child in value.values():
            yield from _strings(child)
    elif isinstance(value, list):
        for child in value:
            yield from _strings(child)


def _sha256(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _unit_float(*parts: str) -> float:
    """Map ``parts`` to a deterministic number in [0, 1)."""
    return int(_sha256(*parts)[:16], 16) / float(1 << 64)


def canonical_json(body: Any) -> str:
    """Canonical JSON text of a request body: the identity of a "distinct request"."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
