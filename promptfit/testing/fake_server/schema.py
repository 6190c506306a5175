"""JSON-schema skeletons: a value that validates against any schema a client sends.

Brains start from :func:`skeleton` and write their answer into it, so every reply is valid
for the request's schema whatever the field names and constraints are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["skeleton"]


def _resolve(schema: Any, root: Mapping[str, Any], depth: int = 0) -> dict[str, Any]:
    """Resolve ``$ref``/``anyOf``/``oneOf``/``allOf`` into one concrete schema dict.

    ``anyOf``/``oneOf`` pick the first non-null branch, except deep inside recursive
    schemas where a nullable branch is taken to guarantee termination.
    """
    if not isinstance(schema, dict):
        return {}
    for _ in range(64):
        ref = schema.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#/"):
            break
        node: Any = root
        for part in ref[2:].split("/"):
            node = (
                node.get(part.replace("~1", "/").replace("~0", "~"), {})
                if isinstance(node, dict)
                else {}
            )
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**node, **siblings} if isinstance(node, dict) else siblings
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            resolved = [_resolve(b, root, depth) for b in branches]
            non_null = [b for b in resolved if b.get("type") != "null"]
            nulls = [b for b in resolved if b.get("type") == "null"]
            pick = nulls[0] if nulls and (depth > 4 or not non_null) else (non_null or resolved)[0]
            rest = {k: v for k, v in schema.items() if k != key}
            return _resolve({**rest, **pick}, root, depth)
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and all_of:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for branch in all_of:
            part = _resolve(branch, root, depth)
            props = {**merged.get("properties", {}), **part.get("properties", {})}
            required = [*merged.get("required", []), *part.get("required", [])]
            merged = {**part, **merged}
            if props:
                merged["properties"] = props
            if required:
                merged["required"] = list(dict.fromkeys(required))
        return _resolve(merged, root, depth)
    return schema


def _schema_type(schema: Mapping[str, Any]) -> str:
    """Return the JSON type a resolved schema describes (string, integer, ...)."""
    if "const" in schema:
        return _value_type(schema["const"])
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return _value_type(enum[0])
    typ = schema.get("type")
    if isinstance(typ, list):
        non_null = [t for t in typ if t != "null"]
        typ = non_null[0] if non_null else "null"
    if isinstance(typ, str):
        return typ
    if "properties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "string"


def _value_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "string"


_FORMAT_DEFAULTS: dict[str, str] = {
    "date-time": "1970-01-01T00:00:00Z",
    "date": "1970-01-01",
    "time": "00:00:00",
    "duration": "PT0S",
    "uuid": "00000000-0000-0000-0000-000000000000",
    "email": "user@example.com",
    "uri": "http://example.com/",
    "url": "http://example.com/",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
}


def _fit_string(value: str, schema: Mapping[str, Any]) -> str:
    """Pad/truncate ``value`` to the schema's length bounds so it stays valid."""
    min_len = schema.get("minLength")
    max_len = schema.get("maxLength")
    if isinstance(min_len, int) and len(value) < min_len:
        value = value + "x" * (min_len - len(value))
    if isinstance(max_len, int) and len(value) > max_len:
        value = value[:max_len]
    return value


def _fit_number(value: float, schema: Mapping[str, Any], integer: bool) -> float:
    """Clamp ``value`` into the schema's (exclusive) bounds."""
    step = 1.0 if integer else 1e-6
    lo = schema.get("minimum")
    hi = schema.get("maximum")
    xlo = schema.get("exclusiveMinimum")
    xhi = schema.get("exclusiveMaximum")
    lower = max(
        [b for b in (lo, None if xlo is None else xlo + step) if isinstance(b, int | float)],
        default=None,
    )
    upper = min(
        [b for b in (hi, None if xhi is None else xhi - step) if isinstance(b, int | float)],
        default=None,
    )
    if lower is not None and value < lower:
        value = math.ceil(lower) if integer else float(lower)
    if upper is not None and value > upper:
        value = math.floor(upper) if integer else float(upper)
    return value


def skeleton(
    schema: Mapping[str, Any], root: Mapping[str, Any] | None = None, depth: int = 0
) -> Any:
    """Build a value that validates against ``schema``, filling every property.

    Why every property (not just required ones): strict OpenAI schemas require all of
    them, and brains need somewhere to write their answer.

    Args:
        schema: A JSON schema (``$defs``/``$ref``, ``anyOf`` and ``allOf`` supported).
        root: The document ``$ref`` pointers resolve against (defaults to ``schema``).
        depth: Recursion depth, used to terminate recursive schemas.

    Returns:
        A JSON-compatible value.

    Example:
        >>> skeleton({"type": "object", "properties": {"n": {"type": "integer"}}})
        {'n': 0}
    """
    root = schema if root is None else root
    s = _resolve(schema, root, depth)
    if "const" in s:
        return s["const"]
    enum = s.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    typ = _schema_type(s)
    if typ == "string":
        fmt = s.get("format")
        base = _FORMAT_DEFAULTS.get(fmt, "") if isinstance(fmt, str) else ""
        return _fit_string(base, s)
    if typ == "integer":
        return int(_fit_number(0, s, integer=True))
    if typ == "number":
        return float(_fit_number(0.0, s, integer=False))
    if typ == "boolean":
        return False
    if typ == "null":
        return None
    if typ == "array":
        prefix = s.get("prefixItems")
        items: list[Any] = []
        if isinstance(prefix, list):
            items = [skeleton(p, root, depth + 1) for p in prefix]
        min_items = s.get("minItems", 0)
        item_schema = s.get("items")
        while isinstance(min_items, int) and len(items) < min_items:
            items.append(
                skeleton(item_schema if isinstance(item_schema, dict) else {}, root, depth + 1)
            )
        return items
    if typ == "object":
        props = s.get("properties", {})
        if not isinstance(props, dict):
            return {}
        return {name: skeleton(sub, root, depth + 1) for name, sub in props.items()}
    return None
