"""A deterministic, OpenAI-compatible chat-completions server for tests and benchmarks.

Why this exists: promptfit sends every LM call through ``litellm.acompletion``. Mocking
that function would skip the HTTP client, retries, ``Retry-After`` handling, JSON-schema
``response_format`` plumbing and connection pooling -- exactly the places where real bugs
hide. Instead, tests start this real HTTP server on ``127.0.0.1`` (in a separate process,
so it never competes with the client's event loop) and point litellm at it::

    litellm.acompletion(model="openai/arith?min_examples=2", api_base=srv.base_url,
                        api_key="sk-test", messages=[...])

Behaviour is selected per *model name* so that tests running in parallel against one
server do not interfere. A model name is ``<brain>`` or ``<brain>?k=v&k=v`` (URL query
syntax).

Brains (what the answer content is):

* ``echo`` -- every string field gets the first string value of the input JSON.
* ``arith`` -- solves ``a op b`` (ints, ``+ - *``) found in the input; fills ``answer``.
* ``sentiment`` -- keyword-based positive/negative label in ``label``/``sentiment``.
* ``judge`` -- LM-as-judge: ``score`` 1.0 if ``prediction`` equals ``ground_truth``.
* ``propose`` -- instruction proposals for optimizers: ``instructions`` field. Shown an
  optimizer's current and scored instructions, it appends the first untried edit of
  :data:`PROPOSAL_EDITS` to option ``text``, so an optimizer must search past rejected ones.

Options (all optional):

* ``latency_ms`` (float, 0) -- sleep before answering (errors included).
* ``fail_first`` (int, 0) -- first N attempts of each distinct request body fail.
* ``error_rate`` (float, 0) -- each attempt fails with this probability, decided
  deterministically from sha256(body, attempt number, seed).
* ``error_status`` (int, 500) -- HTTP status of injected failures.
* ``retry_after`` (str, "1") -- ``Retry-After`` header value for 429/503 failures.
* ``malformed_first`` (int, 0) -- after the ``fail_first`` failures, the next N attempts
  of each distinct request return 200 with content that is not valid JSON.
* ``malformed_rate`` (float, 0) -- each (non-failed) attempt is malformed with this
  probability (deterministic, like ``error_rate``).
* ``no_json_schema`` (bool, 0) -- reject ``response_format`` of type ``json_schema``
  with a 400, to exercise a client's JSON-in-text fallback.
* ``like`` (str) -- answer a ``response_format`` the way a real server does when it does
  not support it, with that server's status and error body: ``vllm`` (400, takes
  ``json_object`` with a ``schema``), ``ollama`` (400, takes ``json_object``, ignores its
  ``schema``), ``openai`` (400, takes a bare ``json_object`` only), ``llamacpp`` (500 like
  llama-cpp-python, takes ``json_object`` with a ``schema``), ``fastapi`` (422 validation
  error, takes no ``response_format`` at all). See :data:`SERVER_LIKES`.
* ``seed`` (int, 0) -- seed for the deterministic ``*_rate`` decisions.
* ``min_examples`` (int, 0) -- skill gate: fewer few-shot examples -> wrong answers.
* ``hint`` (str) -- skill gate: word missing from the system message -> wrong answers.
* ``accuracy`` (float, 1) -- skill gate: each (whole prompt, seed) is answered right with
  this probability, decided deterministically from sha256 of the prompt. Two different
  prompts then have the *same* accuracy but independent mistakes: the null case a search
  optimizer must not mistake for an improvement.
* ``text`` (str) -- base text of the ``propose`` brain.
* ``tag`` (str) -- ignored; makes otherwise identical model names distinct.

Run standalone with ``python -m promptfit.testing.fake_server --host 127.0.0.1 --port 0``;
it prints ``READY http://127.0.0.1:<port>/v1`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Self
from urllib.parse import parse_qsl, urlencode

import httpx

if TYPE_CHECKING:
    from aiohttp import web

__all__ = [
    "BRAINS",
    "SERVER_LIKES",
    "FakeLLMServer",
    "ModelSpec",
    "ServerLike",
    "format_of",
    "generate_content",
    "main",
    "parse_model",
]

BRAINS: frozenset[str] = frozenset({"echo", "arith", "sentiment", "judge", "propose"})

POSITIVE_WORDS: frozenset[str] = frozenset(
    {"good", "great", "excellent", "love", "wonderful"}
    | {"amazing", "best", "enjoyed", "fantastic", "delightful"}
)
NEGATIVE_WORDS: frozenset[str] = frozenset(
    {"bad", "terrible", "awful", "hate", "boring"}
    | {"worst", "poor", "disappointing", "waste", "dull"}
)

DEFAULT_PROPOSAL = "Answer carefully and precisely."

# Fields that hold free-form reasoning. They are filled with an explanation by the
# brains and are not required of few-shot examples (labelled demos rarely carry them).
_REASONING_FIELDS: tuple[str, ...] = ("thinking", "reasoning", "rationale", "critique")

_ARITH_RE = re.compile(r"(-?\d+)\s*([+\-*])\s*(-?\d+)")
_WORD_RE = re.compile(r"[a-z']+")

# Schemas used when a request carries no schema at all: the fields each brain knows.
_BRAIN_SCHEMAS: dict[str, dict[str, Any]] = {
    "echo": {
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
    },
    "arith": {
        "type": "object",
        "properties": {"reasoning": {"type": "string"}, "answer": {"type": "string"}},
        "required": ["answer"],
    },
    "sentiment": {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["positive", "negative"]}},
        "required": ["label"],
    },
    "judge": {
        "type": "object",
        "properties": {"score": {"type": "number"}, "critique": {"type": "string"}},
        "required": ["score"],
    },
    "propose": {
        "type": "object",
        "properties": {"instructions": {"type": "string"}},
        "required": ["instructions"],
    },
}


# --------------------------------------------------------------------------------------
# Model-name grammar
# --------------------------------------------------------------------------------------


class ModelSpecError(ValueError):
    """Raised when a model name does not follow ``<brain>?k=v&k=v``."""


@dataclass(frozen=True)
class ModelSpec:
    """The behaviour encoded in a model name such as ``arith?latency_ms=50&seed=1``.

    Attributes mirror the options documented in the module docstring.
    """

    brain: str
    latency_ms: float = 0.0
    fail_first: int = 0
    error_rate: float = 0.0
    error_status: int = 500
    retry_after: str = "1"
    malformed_first: int = 0
    malformed_rate: float = 0.0
    no_json_schema: bool = False
    like: str = ""
    seed: int = 0
    min_examples: int = 0
    hint: str | None = None
    accuracy: float = 1.0
    text: str = DEFAULT_PROPOSAL
    tag: str = ""


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _parse_probability(value: str) -> float:
    p = float(value)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {p}")
    return p


def _parse_non_negative_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise ValueError(f"must be >= 0, got {n}")
    return n


def _parse_retry_after(value: str) -> str:
    float(value)  # validate: clients parse it as (fractional) seconds
    return value


def _parse_like(value: str) -> str:
    if value not in SERVER_LIKES:
        raise ValueError(f"unknown server {value!r}; expected one of {sorted(SERVER_LIKES)}")
    return value


_OPTION_PARSERS: dict[str, Any] = {
    "latency_ms": float,
    "fail_first": _parse_non_negative_int,
    "error_rate": _parse_probability,
    "error_status": int,
    "retry_after": _parse_retry_after,
    "malformed_first": _parse_non_negative_int,
    "malformed_rate": _parse_probability,
    "no_json_schema": _parse_bool,
    "like": _parse_like,
    "seed": int,
    "min_examples": _parse_non_negative_int,
    "hint": str,
    "accuracy": _parse_probability,
    "text": str,
    "tag": str,
}


def parse_model(model: str) -> ModelSpec:
    """Parse a model name into a :class:`ModelSpec`.

    A leading provider prefix such as ``openai/`` is tolerated so the same string can
    be used on both sides. Unknown brains and options raise :class:`ModelSpecError`
    so that a typo in a test fails loudly instead of silently using defaults.

    Args:
        model: The ``model`` field of a chat-completion request.

    Returns:
        The parsed specification.

    Example:
        >>> parse_model("arith?min_examples=2&hint=carry").min_examples
        2
    """
    base, _, query = model.partition("?")
    brain = base.rsplit("/", 1)[-1].strip()
    if brain not in BRAINS:
        raise ModelSpecError(f"unknown brain {brain!r}; expected one of {sorted(BRAINS)}")
    kwargs: dict[str, Any] = {}
    for key, raw in parse_qsl(query, keep_blank_values=True):
        parser = _OPTION_PARSERS.get(key)
        if parser is None:
            raise ModelSpecError(
                f"unknown option {key!r}; expected one of {sorted(_OPTION_PARSERS)}"
            )
        try:
            kwargs[key] = parser(raw)
        except ValueError as exc:
            raise ModelSpecError(f"bad value for option {key!r}: {exc}") from exc
    return ModelSpec(brain=brain, **kwargs)


# --------------------------------------------------------------------------------------
# Text / JSON helpers
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# JSON-schema skeletons
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Brains
# --------------------------------------------------------------------------------------


@dataclass
class _Fields:
    """Top-level fields of an object schema, resolved, in declaration order."""

    schema: dict[str, Any]
    root: dict[str, Any]
    props: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, schema: dict[str, Any]) -> _Fields:
        resolved = _resolve(schema, schema)
        raw = resolved.get("properties", {})
        props = {k: _resolve(v, schema, 1) for k, v in raw.items()} if isinstance(raw, dict) else {}
        return cls(schema=resolved, root=schema, props=props)

    def type_of(self, name: str) -> str:
        return _schema_type(self.props[name])

    def first(self, *types: str, exclude: tuple[str, ...] = ()) -> str | None:
        for name in self.props:
            if name not in exclude and self.type_of(name) in types:
                return name
        return None

    def named(self, names: tuple[str, ...], *types: str) -> str | None:
        for name in names:
            if name in self.props and self.type_of(name) in types:
                return name
        return None

    def set_string(self, obj: dict[str, Any], name: str, value: str) -> None:
        sub = self.props[name]
        enum = sub.get("enum")
        if isinstance(enum, list) and enum:
            if value in enum:
                obj[name] = value
            return
        if "const" in sub:
            return
        obj[name] = _fit_string(value, sub)

    def set_number(self, obj: dict[str, Any], name: str, value: float) -> None:
        sub = self.props[name]
        typ = self.type_of(name)
        if typ == "string":
            text = str(int(value)) if float(value).is_integer() else str(value)
            self.set_string(obj, name, text)
        elif typ == "integer":
            obj[name] = int(_fit_number(round(value), sub, integer=True))
        elif typ == "number":
            obj[name] = float(_fit_number(float(value), sub, integer=False))


@dataclass
class _Request:
    """What a brain may look at: the prompt, the input JSON, gates, the options."""

    spec: ModelSpec
    prompt: str
    system: str
    last_user: str
    inp: dict[str, Any]


def _gate_failed(req: _Request, fields: _Fields) -> bool:
    """Whether a skill gate forces a wrong answer.

    Why: lets tests prove that a few-shot optimizer (``min_examples``) or an
    instruction optimizer (``hint``) really changes what the model does.
    """
    spec = req.spec
    if spec.hint is not None and spec.hint.lower() not in req.system.lower():
        return True
    if spec.accuracy < 1.0 and _unit_float("accuracy", req.prompt, str(spec.seed)) >= spec.accuracy:
        return True
    if spec.min_examples > 0:
        return count_examples(req.prompt, fields.schema) < spec.min_examples
    return False


def count_examples(prompt: str, schema: Mapping[str, Any]) -> int:
    """Count few-shot output examples in ``prompt``.

    An example is a JSON object (at any nesting level, schemas excluded) containing all
    of the schema's required properties -- or all properties if none are required --
    ignoring free-form reasoning fields such as ``reasoning``/``thinking``, which
    labelled demos usually lack.

    Args:
        prompt: All message texts joined.
        schema: The output schema.

    Returns:
        The number of example objects found.
    """
    props = schema.get("properties")
    if not isinstance(props, dict):
        return 0
    required = schema.get("required") or list(props)
    keys = [k for k in required if k not in _REASONING_FIELDS] or list(required)
    if not keys:
        return 0
    count = 0
    for top in _iter_json_objects(prompt):
        for obj in _walk_dicts(top):
            if all(k in obj for k in keys):
                count += 1
    return count


def _input_texts(req: _Request) -> list[str]:
    texts = list(_strings(req.inp))
    return texts if texts else [req.last_user]


def _brain_echo(req: _Request, fields: _Fields, obj: dict[str, Any]) -> None:
    first = next(_strings(req.inp), "")
    for name, sub in fields.props.items():
        # Formatted/patterned strings (dates, uuids, ...) keep their valid placeholder.
        if fields.type_of(name) == "string" and "format" not in sub and "pattern" not in sub:
            fields.set_string(obj, name, first)


def _brain_arith(req: _Request, fields: _Fields, obj: dict[str, Any]) -> None:
    match = None
    for text in _input_texts(req):
        match = _ARITH_RE.search(text)
        if match:
            break
    if match is None:
        return
    a, op, b = int(match.group(1)), match.group(2), int(match.group(3))
    result = a + b if op == "+" else a - b if op == "-" else a * b
    if _gate_failed(req, fields):
        result += 1
    target = fields.named(("answer",), "string", "integer", "number") or fields.first(
        "string", "integer", "number", exclude=_REASONING_FIELDS
    )
    if target is not None:
        fields.set_number(obj, target, result)
    for name in _REASONING_FIELDS:
        if name in fields.props and fields.type_of(name) == "string" and name != target:
            fields.set_string(obj, name, f"{a} {op} {b} = {result}")


def sentiment_label(text: str) -> str:
    """Keyword-vote sentiment: ``positive`` only if positive words outnumber negative."""
    words = _WORD_RE.findall(text.lower())
    pos = sum(w in POSITIVE_WORDS for w in words)
    neg = sum(w in NEGATIVE_WORDS for w in words)
    return "positive" if pos > neg else "negative"


def _match_enum(label: str, enum: list[Any]) -> Any:
    """Pick the enum member meaning ``label`` (``POSITIVE``, ``pos``, ``Positive``...)."""
    for member in enum:
        if isinstance(member, str) and member.strip().lower() == label:
            return member
    for member in enum:
        if isinstance(member, str):
            m = member.strip().lower()
            if m and (label.startswith(m) or m.startswith(label[:3])):
                return member
    return enum[0]


def _brain_sentiment(req: _Request, fields: _Fields, obj: dict[str, Any]) -> None:
    text = " ".join(_input_texts(req))
    label = "positive" if _gate_failed(req, fields) else sentiment_label(text)
    target = fields.named(("label", "sentiment"), "string") or fields.first(
        "string", exclude=_REASONING_FIELDS
    )
    if target is not None:
        enum = fields.props[target].get("enum")
        value = _match_enum(label, enum) if isinstance(enum, list) and enum else label
        fields.set_string(obj, target, value)
    for name in _REASONING_FIELDS:
        if name in fields.props and name != target and fields.type_of(name) == "string":
            fields.set_string(obj, name, f"The text reads as {label}.")


_PREDICTION_KEYS: tuple[str, ...] = ("prediction", "pred", "predicted", "output", "response")
_TRUTH_KEYS: tuple[str, ...] = ("ground_truth", "gold", "expected", "reference", "target", "label")


def _normalise(value: Any) -> Any:
    """Normalise for equality: lower/strip strings, sort keys, ``"5" == 5 == 5.0``."""
    if isinstance(value, dict):
        return tuple(sorted((str(k).strip().lower(), _normalise(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_normalise(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        text = value.strip()
        with contextlib.suppress(ValueError):
            parsed = json.loads(text)
            if isinstance(parsed, dict | list):
                return _normalise(parsed)
        return text.lower()
    return str(value).strip().lower()


def _brain_judge(req: _Request, fields: _Fields, obj: dict[str, Any]) -> None:
    pred_key = next((k for k in _PREDICTION_KEYS if k in req.inp), None)
    truth_key = next((k for k in _TRUTH_KEYS if k in req.inp), None)
    equal = (
        pred_key is not None
        and truth_key is not None
        and _normalise(req.inp[pred_key]) == _normalise(req.inp[truth_key])
    )
    score = 1.0 if equal else 0.0
    target = fields.named(("score",), "number", "integer") or fields.first("number", "integer")
    if target is not None:
        fields.set_number(obj, target, score)
    for name in ("correct", "is_correct", "match", "matches", "passed"):
        if name in fields.props and fields.type_of(name) == "boolean":
            obj[name] = equal
    verdict = (
        "The prediction matches the ground truth."
        if equal
        else "The prediction differs from the ground truth."
    )
    for name in ("critique", "reasoning", "rationale", "thinking", "feedback"):
        if name in fields.props and fields.type_of(name) == "string":
            fields.set_string(obj, name, verdict)


# The edits the ``propose`` brain tries, in this order, when it is shown an instruction
# optimizer's feedback. Why a fixed list: an optimizer test must make the optimizer *search*
# (a proposal that loses its race is rejected, the next one must differ) instead of handing
# the proposer the winning text; a model gated on a word of a later edit (``hint=``) is then
# only fixed when the optimizer feeds the scores of rejected proposals back to the proposer.
PROPOSAL_EDITS: tuple[str, ...] = (
    "Think it through.",
    "Reply in plain words.",
    "Double-check every sum.",
    "Keep the reply short.",
)


def _tried_instructions(inp: Mapping[str, Any]) -> list[str]:
    """The instructions an optimizer says it has (current and scored), or [] if none."""
    current = inp.get("current_instructions")
    tried = [current] if isinstance(current, str) else []
    scored = inp.get("scored_instructions")
    for item in scored if isinstance(scored, list) else []:
        if isinstance(item, dict) and isinstance(item.get("instructions"), str):
            tried.append(item["instructions"])
    return tried


def proposal_text(spec: ModelSpec, prompt: str, inp: Mapping[str, Any] | None = None) -> str:
    """Build the ``propose`` output.

    Shown an optimizer's feedback (``current_instructions`` and ``scored_instructions`` in
    the input JSON, as ``InstructionOptimizer`` sends), option ``text`` plus the first of
    :data:`PROPOSAL_EDITS` that none of those instructions contains. Otherwise, or once every
    edit was tried, option ``text`` plus a prompt-derived variant.
    """
    tried = _tried_instructions(inp or {})
    if tried:
        for edit in PROPOSAL_EDITS:
            if not any(edit in text for text in tried):
                return f"{spec.text} {edit}"
    variant = int(_sha256("propose", prompt, str(spec.seed))[:8], 16) % 100
    return f"{spec.text} (variant {variant})"


def _brain_propose(req: _Request, fields: _Fields, obj: dict[str, Any]) -> None:
    target = fields.named(("instructions", "instruction"), "string") or fields.first("string")
    if target is not None:
        fields.set_string(obj, target, proposal_text(req.spec, req.prompt, req.inp))


_BRAIN_FUNCS = {
    "echo": _brain_echo,
    "arith": _brain_arith,
    "sentiment": _brain_sentiment,
    "judge": _brain_judge,
    "propose": _brain_propose,
}


def _find_schema(body: Mapping[str, Any], texts: list[str]) -> dict[str, Any] | None:
    """Find the output schema: ``response_format``, else JSON embedded in a prompt."""
    rf = body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") == "json_schema":
        js = rf.get("json_schema")
        if isinstance(js, dict) and isinstance(js.get("schema"), dict):
            return js["schema"]
    if (
        isinstance(rf, dict)
        and rf.get("type") == "json_object"
        and isinstance(rf.get("schema"), dict)
    ):
        return rf["schema"]
    for text in texts:
        for obj in _iter_json_objects(text):
            found = _first_schema(obj)
            if found is not None:
                return found
    return None


def _first_schema(value: Any) -> dict[str, Any] | None:
    """Return the outermost dict with a ``properties`` key, in document order."""
    if isinstance(value, dict):
        if _is_schema(value):
            return value
        children: list[Any] = list(value.values())
    elif isinstance(value, list):
        children = value
    else:
        return None
    for child in children:
        found = _first_schema(child)
        if found is not None:
            return found
    return None


def _last_input(text: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for obj in _iter_json_objects(text):
        if not _is_schema(obj):
            found = obj
    return found


def generate_content(body: Mapping[str, Any], spec: ModelSpec) -> tuple[str, Any]:
    """Compute the assistant content for a chat-completion request body.

    Args:
        body: The parsed request JSON.
        spec: The parsed model name.

    Returns:
        ``(content, value)``: the text sent back and the JSON value it encodes (the
        value is used to build malformed variants).

    Example:
        >>> body = {"messages": [{"role": "user", "content": '{"q": "2 + 3"}'}]}
        >>> generate_content(body, parse_model("arith"))[1]
        {'reasoning': '2 + 3 = 5', 'answer': '5'}
    """
    messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
    texts = [_message_text(m) for m in messages]
    prompt = "\n".join(texts)
    system = "\n".join(
        t for m, t in zip(messages, texts, strict=True) if m.get("role") in {"system", "developer"}
    )
    users = [t for m, t in zip(messages, texts, strict=True) if m.get("role") == "user"]
    last_user = users[-1] if users else ""
    req = _Request(
        spec=spec, prompt=prompt, system=system, last_user=last_user, inp=_last_input(last_user)
    )
    found = _find_schema(body, texts)
    schema = found if found is not None else _BRAIN_SCHEMAS[spec.brain]
    value = skeleton(schema)
    if isinstance(value, dict):
        _BRAIN_FUNCS[spec.brain](req, _Fields.of(schema), value)
    rf = body.get("response_format")
    rf_type = rf.get("type") if isinstance(rf, dict) else None
    text = json.dumps(value, ensure_ascii=False)
    if found is not None or rf_type in {"json_object", "json_schema"}:
        return text, value
    if spec.brain == "echo":
        return "OK", value
    return (
        f"Sure, here is my answer.\n\n```json\n{text}\n```\n\n"
        "Let me know if you need anything else.",
        value,
    )


# --------------------------------------------------------------------------------------
# HTTP server (runs in the child process)
# --------------------------------------------------------------------------------------

_ERROR_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "timeout"),
}


def format_of(body: Mapping[str, Any]) -> str:
    """The structured-output mode of a request body, in promptfit's names."""
    rf = body.get("response_format")
    if not isinstance(rf, dict) or rf.get("type") in (None, "text"):
        return "json_text"
    if rf.get("type") == "json_schema":
        return "json_schema"
    if rf.get("type") == "json_object":
        return "json_object_schema" if "schema" in rf else "json_object"
    return str(rf.get("type"))


def _openai_error(message: str, param: str | None = "response_format") -> dict[str, Any]:
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    }


def _pydantic_literal(allowed: str, given: str) -> str:
    return (
        "1 validation error for ChatCompletionRequest\nresponse_format.type\n  Input should be "
        f"{allowed} [type=literal_error, input_value='{given}', input_type=str]"
    )


@dataclass(frozen=True)
class ServerLike:
    """How one kind of real server answers a ``response_format`` it does not support."""

    accepts: frozenset[str]  # modes (see :func:`format_of`) it serves
    status: int
    error: Any  # (mode, body) -> JSON error body


SERVER_LIKES: dict[str, ServerLike] = {
    # vLLM (before json_schema support): a pydantic literal error, OpenAI-shaped, 400.
    "vllm": ServerLike(
        frozenset({"json_object_schema", "json_object", "json_text"}),
        400,
        lambda mode, rf: {
            "object": "error",
            "message": _pydantic_literal("'text' or 'json_object'", str(rf.get("type"))),
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        },
    ),
    # Ollama's OpenAI-compatible endpoint (older releases); Go ignores the unknown ``schema``.
    "ollama": ServerLike(
        frozenset({"json_object_schema", "json_object", "json_text"}),
        400,
        lambda mode, rf: {
            "error": {
                "message": f"invalid response_format type: {rf.get('type')}",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        },
    ),
    # OpenAI on a model without structured outputs: json_schema refused, extra keys refused.
    "openai": ServerLike(
        frozenset({"json_object", "json_text"}),
        400,
        lambda mode, rf: _openai_error(
            "Invalid parameter: 'response_format' of type 'json_schema' is not supported with "
            "this model. Learn more about supported models at the Structured Outputs guide: "
            "https://platform.openai.com/docs/guides/structured-outputs"
            if mode == "json_schema"
            else "Additional properties are not allowed ('schema' was unexpected) - "
            "'response_format'"
        ),
    ),
    # llama-cpp-python's server: its request validation error comes back as HTTP 500
    # (body as sent by llama-cpp-python 0.3 for a json_schema response_format).
    "llamacpp": ServerLike(
        frozenset({"json_object_schema", "json_object", "json_text"}),
        500,
        lambda mode, rf: {
            "error": {
                "message": "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', "
                "'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\", "
                f"'input': '{rf.get('type')}', 'ctx': {{'expected': \"'text' or 'json_object'\"}}}}"
                '\n\n  File "llama_cpp/server/app.py", line 376, in create_chat_completion\n'
                "    POST /v1/chat/completions",
                "type": "internal_server_error",
                "param": None,
                "code": None,
            }
        },
    ),
    # A FastAPI gateway whose schema has no response_format: 422 validation error.
    "fastapi": ServerLike(
        frozenset({"json_text"}),
        422,
        lambda mode, rf: {
            "detail": [
                {
                    "type": "extra_forbidden",
                    "loc": ["body", "response_format"],
                    "msg": "Extra inputs are not permitted",
                    "input": rf,
                }
            ]
        },
    ),
}


@dataclass
class _Stats:
    requests: int = 0
    by_model: dict[str, int] = field(default_factory=dict)
    injected_errors: int = 0
    malformed: int = 0
    with_json_schema: int = 0
    json_schema_rejected: int = 0
    format_rejected: int = 0
    by_format: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_model": dict(self.by_model),
            "injected_errors": self.injected_errors,
            "malformed": self.malformed,
            "with_json_schema": self.with_json_schema,
            "json_schema_rejected": self.json_schema_rejected,
            "format_rejected": self.format_rejected,
            "by_format": dict(self.by_format),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }


@dataclass
class _State:
    stats: _Stats = field(default_factory=_Stats)
    # (model, sha256 of canonical body) -> number of attempts seen so far
    attempts: dict[tuple[str, str], int] = field(default_factory=dict)

    def reset(self, model: str | None) -> None:
        if model is None:
            in_flight = self.stats.in_flight
            self.stats = _Stats(in_flight=in_flight)
            self.attempts.clear()
            return
        self.stats.by_model.pop(model, None)
        for key in [k for k in self.attempts if k[0] == model]:
            del self.attempts[key]


def _error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    from aiohttp import web

    err_type, code = _ERROR_TYPES.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", "error")
    )
    payload = {"error": {"message": message, "type": err_type, "param": None, "code": code}}
    return web.json_response(payload, status=status, headers=dict(headers or {}))


def _build_app(state: _State, max_concurrency: int = 0) -> web.Application:
    from aiohttp import web

    # A real inference server has a fixed number of slots (vLLM's max_num_seqs, llama.cpp's
    # --parallel): requests beyond it wait. ``max_concurrency`` > 0 reproduces that.
    slots = asyncio.Semaphore(max_concurrency) if max_concurrency > 0 else None

    async def chat(request: web.Request) -> web.StreamResponse:
        if slots is not None:
            async with slots:
                return await _counted(request)
        return await _counted(request)

    async def _counted(request: web.Request) -> web.StreamResponse:
        state.stats.in_flight += 1
        state.stats.max_in_flight = max(state.stats.max_in_flight, state.stats.in_flight)
        try:
            return await _chat(request)
        finally:
            state.stats.in_flight -= 1

    async def _chat(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error_response(400, "Request body is not valid JSON.")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error_response(400, "Request must be a JSON object with a 'messages' list.")
        model = body.get("model")
        if not isinstance(model, str):
            return _error_response(400, "Missing 'model'.")
        stats = state.stats
        stats.requests += 1
        stats.by_model[model] = stats.by_model.get(model, 0) + 1
        try:
            spec = parse_model(model)
        except ModelSpecError as exc:
            return _error_response(404, f"The model {model!r} does not exist: {exc}")

        canon = canonical_json(body)
        key = (model, _sha256(canon))
        attempt = state.attempts.get(key, 0)
        state.attempts[key] = attempt + 1
        rf = body.get("response_format")
        wants_schema = isinstance(rf, dict) and rf.get("type") == "json_schema"
        if wants_schema:
            stats.with_json_schema += 1

        if spec.latency_ms > 0:
            await asyncio.sleep(spec.latency_ms / 1000.0)

        if body.get("stream"):
            return _error_response(
                400, "Streaming is not supported by the fake server; set stream=false."
            )
        mode = format_of(body)
        stats.by_format[mode] = stats.by_format.get(mode, 0) + 1
        like = SERVER_LIKES.get(spec.like)
        if like is not None and mode not in like.accepts:
            stats.format_rejected += 1
            return web.json_response(like.error(mode, rf), status=like.status)
        if spec.no_json_schema and wants_schema:
            stats.json_schema_rejected += 1
            return _error_response(
                400,
                "Invalid parameter: 'response_format' of type 'json_schema' is not "
                "supported with this model.",
            )

        seed = str(spec.seed)
        fail = attempt < spec.fail_first or (
            spec.error_rate > 0
            and _unit_float("error", canon, str(attempt), seed) < spec.error_rate
        )
        if fail:
            stats.injected_errors += 1
            headers = {"Retry-After": spec.retry_after} if spec.error_status in {429, 503} else {}
            return _error_response(
                spec.error_status,
                f"Injected failure (attempt {attempt + 1}) from fake server.",
                headers,
            )

        try:
            content, value = generate_content(body, spec)
        except Exception as exc:  # a bug here must surface as a readable 500, not a hang
            return _error_response(
                500, f"Fake server failed to build a reply: {type(exc).__name__}: {exc}"
            )

        malformed = attempt - spec.fail_first < spec.malformed_first or (
            spec.malformed_rate > 0
            and _unit_float("malformed", canon, str(attempt), seed) < spec.malformed_rate
        )
        if malformed:
            stats.malformed += 1
            full = json.dumps(
                value if isinstance(value, dict) and value else {"answer": ""}, ensure_ascii=False
            )
            content = full[: max(2, len(full) // 2)]

        prompt_chars = sum(len(_message_text(m)) for m in body["messages"] if isinstance(m, dict))
        prompt_tokens = max(1, prompt_chars // 4)
        completion_tokens = max(1, len(content) // 4)
        payload = {
            "id": "chatcmpl-" + _sha256(canon, str(attempt))[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return web.json_response(payload)

    async def stats_handler(request: web.Request) -> web.Response:
        return web.json_response(state.stats.as_json())

    async def reset_handler(request: web.Request) -> web.Response:
        model = request.query.get("model")
        state.reset(model)
        return web.json_response({"ok": True})

    async def models_handler(request: web.Request) -> web.Response:
        data = [
            {"id": b, "object": "model", "created": 0, "owned_by": "promptfit"}
            for b in sorted(BRAINS)
        ]
        return web.json_response({"object": "list", "data": data})

    async def health_handler(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/chat/completions", chat)
    app.router.add_get("/v1/models", models_handler)
    app.router.add_get("/models", models_handler)
    app.router.add_get("/admin/stats", stats_handler)
    app.router.add_post("/admin/reset", reset_handler)
    app.router.add_get("/admin/health", health_handler)
    return app


async def _serve(
    host: str, port: int, backlog: int, parent_pid: int | None, max_concurrency: int = 0
) -> None:
    from aiohttp import web

    state = _State()
    app = _build_app(state, max_concurrency)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=backlog, reuse_address=True)
    await site.start()
    bound_port = runner.addresses[0][1]
    # A wildcard bind is announced as loopback: that is where local clients connect.
    shown_host = host if host not in {"0.0.0.0", "::", ""} else "127.0.0.1"
    sys.stdout.write(f"READY http://{shown_host}:{bound_port}/v1\n")
    sys.stdout.flush()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            # Why: a test process killed with SIGKILL cannot stop us; do not linger.
            if parent_pid is not None and os.getppid() != parent_pid:
                break
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: serve until SIGTERM/SIGINT.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    parser = argparse.ArgumentParser(description="Deterministic OpenAI-compatible fake LLM server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument(
        "--parent-pid", type=int, default=None, help="exit when this parent process goes away"
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=0,
        help="requests served at once; the rest wait (0: no limit)",
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            _serve(args.host, args.port, args.backlog, args.parent_pid, args.max_concurrency)
        )
    return 0


# --------------------------------------------------------------------------------------
# Client-side handle
# --------------------------------------------------------------------------------------


class FakeLLMServer:
    """Run the fake OpenAI-compatible server in a child process and talk to it.

    The server lives in its own process so that it never shares an event loop (or the
    GIL) with the code under test: at high concurrency the client must be the
    bottleneck, not the server.

    Args:
        host: Interface to bind; keep the default loopback address.
        port: TCP port; ``0`` lets the OS pick a free one.
        startup_timeout: Seconds to wait for the child to print ``READY``.
        backlog: Listen backlog of the server socket.
        max_concurrency: Requests served at once, like an inference server's slots (vLLM's
            ``max_num_seqs``, llama.cpp's ``--parallel``); the rest wait. 0: no limit.

    Example:
        >>> import asyncio, litellm
        >>> with FakeLLMServer() as srv:  # doctest: +SKIP
        ...     resp = asyncio.run(
        ...         litellm.acompletion(
        ...             model=FakeLLMServer.model("arith", latency_ms=5),  # "openai/arith?..."
        ...             messages=[{"role": "user", "content": '{"question": "2 + 3"}'}],
        ...             **srv.litellm_kwargs(),  # api_base=srv.base_url, api_key="sk-test"
        ...         )
        ...     )
        ...     print(resp.choices[0].message.content)
        ...     print(srv.stats()["requests"])
        Sure, here is my answer. ... "answer": "5" ...
        1
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        startup_timeout: float = 30.0,
        backlog: int = 4096,
        max_concurrency: int = 0,
    ) -> None:
        self.host = host
        self.max_concurrency = max_concurrency
        self._requested_port = port
        self.startup_timeout = startup_timeout
        self.backlog = backlog
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdout: IO[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._base_url: str | None = None
        self._port: int | None = None
        self._client: httpx.Client | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Launch the server process and block until it is listening.

        Returns:
            ``self``, so ``srv = FakeLLMServer().start()`` works.

        Raises:
            RuntimeError: If already started, or the child exits before ``READY``.
            TimeoutError: If ``READY`` does not arrive within ``startup_timeout``.
        """
        if self._proc is not None:
            raise RuntimeError("FakeLLMServer is already started")
        # Files, not pipes: nobody has to drain them, and they outlive this call
        # (closed in ``_cleanup``), so a context manager does not fit.
        self._stdout = tempfile.TemporaryFile()  # noqa: SIM115
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        # Run the file directly (same program as ``python -m``) so that starting the
        # server does not import the whole promptfit package and its heavy deps.
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--host",
            self.host,
            "--port",
            str(self._requested_port),
            "--backlog",
            str(self.backlog),
            "--parent-pid",
            str(os.getpid()),
            "--max-concurrency",
            str(self.max_concurrency),
        ]
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._stdout, stderr=self._stderr
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            line = self._read(self._stdout)
            if "READY " in line:
                url = line.split("READY ", 1)[1].split()[0]
                self._base_url = url
                self._port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
                break
            code = self._proc.poll()
            if code is not None:
                err = self._read(self._stderr)
                self._cleanup()
                raise RuntimeError(
                    f"fake LLM server exited with code {code} before it was ready; stderr:\n{err}"
                )
            if time.monotonic() > deadline:
                err = self._read(self._stderr)
                self.stop()
                raise TimeoutError(
                    f"fake LLM server not ready after {self.startup_timeout} s; stderr:\n{err}"
                )
            time.sleep(0.01)
        self._client = httpx.Client(
            base_url=f"http://{self.host}:{self._port}", timeout=10.0, trust_env=False
        )
        return self

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 5 s). Safe to call twice."""
        proc = self._proc
        if proc is None:
            return
        atexit.unregister(self.stop)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._client is not None:
            self._client.close()
        for handle in (self._stdout, self._stderr):
            if handle is not None:
                handle.close()
        self._proc = None
        self._client = None
        self._stdout = self._stderr = None

    @staticmethod
    def _read(handle: IO[bytes] | None) -> str:
        if handle is None:
            return ""
        handle.seek(0)
        return handle.read().decode(errors="replace")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- properties --------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: pass as litellm's ``api_base``."""
        if self._base_url is None:
            raise RuntimeError("FakeLLMServer is not started")
        return self._base_url

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._port is None:
            raise RuntimeError("FakeLLMServer is not started")
        return self._port

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server process's id (``None`` when stopped): benchmarks read its CPU time."""
        return self._proc.pid if self._proc is not None else None

    # -- helpers -----------------------------------------------------------------------

    @staticmethod
    def model(brain: str, provider: str = "openai", **options: Any) -> str:
        """Build a model name, e.g. ``model("arith", latency_ms=50)``.

        Args:
            brain: One of :data:`BRAINS`.
            provider: litellm provider prefix (``""`` for none).
            **options: Options from the module docstring; booleans become 0/1.

        Returns:
            For example ``"openai/arith?latency_ms=50"``.
        """
        if brain not in BRAINS:
            raise ValueError(f"unknown brain {brain!r}")
        clean = {k: int(v) if isinstance(v, bool) else v for k, v in options.items()}
        unknown = set(clean) - set(_OPTION_PARSERS)
        if unknown:
            raise ValueError(f"unknown options {sorted(unknown)}")
        name = f"{brain}?{urlencode(clean)}" if clean else brain
        return f"{provider}/{name}" if provider else name

    def litellm_kwargs(self) -> dict[str, str]:
        """``api_base``/``api_key`` keyword arguments for ``litellm.acompletion``."""
        return {"api_base": self.base_url, "api_key": "sk-test"}

    def _admin(self) -> httpx.Client:
        if self._client is None:
            raise RuntimeError("FakeLLMServer is not started")
        return self._client

    def stats(self) -> dict[str, Any]:
        """Counters since start/last reset.

        Returns:
            ``{"requests", "by_model", "injected_errors", "malformed",
            "with_json_schema", "json_schema_rejected", "in_flight", "max_in_flight"}``.
        """
        resp = self._admin().get("/admin/stats")
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def reset(self, model: str | None = None) -> None:
        """Zero the counters and forget per-request attempt numbers.

        Args:
            model: If given (as sent on the wire, without provider prefix), only that
                model's attempt memory and ``by_model`` count are cleared, so parallel
                tests using other models are unaffected.
        """
        params = {"model": model} if model is not None else None
        resp = self._admin().post("/admin/reset", params=params)
        resp.raise_for_status()


if __name__ == "__main__":
    sys.exit(main())
