"""Brains: what the answer says (``echo``, ``arith``, ``sentiment``, ``judge``, ``propose``).

Each brain reads the prompt and the last input JSON and fills a schema skeleton; the skill
gates (``min_examples``, ``hint``, ``accuracy``) make it answer wrongly on purpose, so tests can
prove that an optimizer really changes what the model does.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .schema import _fit_number, _fit_string, _resolve, _schema_type, skeleton
from .spec import ModelSpec
from .text import (
    _is_schema,
    _iter_json_objects,
    _message_text,
    _sha256,
    _strings,
    _unit_float,
    _walk_dicts,
)

__all__ = [
    "NEGATIVE_WORDS",
    "POSITIVE_WORDS",
    "count_examples",
    "generate_content",
    "proposal_text",
    "sentiment_label",
]

POSITIVE_WORDS: frozenset[str] = frozenset(
    {"good", "great", "excellent", "love", "wonderful"}
    | {"amazing", "best", "enjoyed", "fantastic", "delightful"}
)
NEGATIVE_WORDS: frozenset[str] = frozenset(
    {"bad", "terrible", "awful", "hate", "boring"}
    | {"worst", "poor", "disappointing", "waste", "dull"}
)


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
