"""The one place that builds LM requests and reads LM replies.

A prompt is a list of chat messages in one fixed shape, which both chat models and the
embedded base model (``local/``) understand:

1. a ``system`` message: the instructions, a blank line, then ``Output JSON schema: {...}``;
2. one ``user``/``assistant`` pair per few-shot example (input JSON, output JSON);
3. a final ``user`` message holding the input as JSON.

Everything here is a pure function, so a module can precompute the parts that only change when
its variables change.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = [
    "SCHEMA_MARKER",
    "build_messages",
    "parse_json_reply",
    "render_system",
    "response_format",
]

SCHEMA_MARKER = "Output JSON schema:"

_FENCE = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.DOTALL)


def render_system(instructions: str, schema_text: str) -> str:
    """The system message: instructions, then the output schema on its own line."""
    instructions = instructions.strip()
    schema_line = f"{SCHEMA_MARKER} {schema_text}"
    return f"{instructions}\n\n{schema_line}" if instructions else schema_line


def dumps(value: Any) -> str:
    """Compact, stable JSON used for every value that goes into a prompt."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def build_messages(
    system: str, examples: list[tuple[dict[str, Any], dict[str, Any]]], inputs: dict[str, Any]
) -> list[dict[str, str]]:
    """Chat messages for one generation."""
    messages = [{"role": "system", "content": system}]
    for example_in, example_out in examples:
        messages.append({"role": "user", "content": dumps(example_in)})
        messages.append({"role": "assistant", "content": dumps(example_out)})
    messages.append({"role": "user", "content": dumps(inputs)})
    return messages


def response_format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAI-style ``json_schema`` response format (litellm translates it per provider).

    The other structured-output modes are built by
    :func:`promptfit.language_models.structured.response_format_for`.
    """
    from promptfit.language_models.structured import response_format_for

    return response_format_for("json_schema", name, schema)  # type: ignore[return-value]


def parse_json_reply(text: str) -> dict[str, Any]:
    """Extract the JSON object from a reply: bare JSON, a fenced block, or the first object.

    Raises:
        ValueError: no JSON object can be decoded from ``text``.
    """
    text = text.strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        return value
    match = _FENCE.search(text)
    if match:
        try:
            value = json.loads(match.group(1))
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            return value
    decoder = json.JSONDecoder()
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError(f"The reply holds no JSON object: {text[:200]!r}")
