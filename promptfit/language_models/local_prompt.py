"""The embedded model's prompt: promptfit's chat messages as a base model's completion document.

The shipped model is Gemma 3 270M *base*: it has never seen a chat template, but it continues
text patterns well. The messages promptfit sends are therefore rendered as a plain
``Input: ... / Output: ...`` document (:func:`render_prompt`); the schema text is dropped (a
grammar enforces it). Pure functions, split out of :mod:`.local` (one concern per module).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["INPUT_PREFIX", "OUTPUT_PREFIX", "SCHEMA_MARKER", "render_prompt"]

SCHEMA_MARKER = "Output JSON schema:"
"""How promptfit's system message introduces the schema (see ``request.render_system``)."""

INPUT_PREFIX = "Input: "
OUTPUT_PREFIX = "Output:\n"
"""The output goes on its own line. The grammar makes the output start with ``{``; after a
line break that is the very token the examples have there, whereas right after ``Output:`` the
examples' token would be `` {"`` (space included), which the grammar forbids."""


def _text_of(content: Any) -> str:
    """Message content as text; OpenAI-style content-part lists keep only their text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = [
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        ]
        return "\n".join(parts)
    return str(content)


def _one_line(text: str) -> str:
    """Re-serialize JSON on a single line, so each example is exactly one line.

    A base model copies the layout of the examples; one-line JSON keeps prompts short and makes
    the blank line after each ``Output:`` a reliable end-of-answer marker. Text that is not JSON
    is kept, with its newlines folded into spaces for the same reason.
    """
    text = text.strip()
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return " ".join(text.split())
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _split_system(system: str) -> tuple[str, dict[str, Any] | None]:
    """Instructions and the parsed output schema (if present) from promptfit's system message."""
    head, marker, tail = system.partition(SCHEMA_MARKER)
    if not marker:
        return system.strip(), None
    try:
        schema = json.loads(tail.strip())
    except json.JSONDecodeError:
        schema = None
    return head.strip(), schema if isinstance(schema, dict) else None


def _field_notes(schema: Mapping[str, Any] | None) -> list[str]:
    """``- name: description`` for output fields that carry a description.

    The grammar fixes the *shape* of the output, but a field's description can be real task
    information (what ``label`` means, units, ...), so it is kept in plain words.
    """
    if not schema:
        return []
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return []
    notes = []
    for name, spec in properties.items():
        if isinstance(spec, Mapping) and isinstance(spec.get("description"), str):
            description = " ".join(spec["description"].split())
            if description:
                notes.append(f"- {name}: {description}")
    return notes


def render_prompt(messages: Sequence[Mapping[str, Any]]) -> str:
    """Render promptfit's chat messages as a plain completion prompt for a *base* model.

    Layout::

        <instructions>
        Output fields:            (only if the schema has field descriptions)
        - label: ...

        Input: {"review": "..."}
        Output:
        {"label": "positive"}

        Input: {"review": "..."}
        Output:

    A base model has no notion of roles; what it does well is continue a repeated pattern, so
    every few-shot example becomes one ``Input:``/``Output:`` pair and the prompt ends where the
    next output should start. The ``Output JSON schema:`` block is dropped: the grammar already
    enforces it, and a raw JSON schema is noise to a 270M model that only costs context.

    Any message list renders: extra ``system`` messages become preamble text, ``user`` messages
    become ``Input:`` lines and ``assistant`` messages ``Output:`` lines. If the conversation
    does not end with a ``user`` message, no trailing ``Output:`` is added.

    Returns:
        The prompt. It ends with ``Output:`` and a line break, exactly where each example's
        output begins, so the first generated token is the one the examples put there.
    """
    preamble: list[str] = []
    blocks: list[str] = []
    pending_input: str | None = None
    for message in messages:
        role = message.get("role")
        text = _text_of(message.get("content"))
        if role in ("system", "developer"):
            instructions, schema = _split_system(text)
            notes = _field_notes(schema)
            if notes:
                instructions = "\n".join([instructions, "Output fields:", *notes]).strip()
            if instructions:
                preamble.append(instructions)
        elif role == "assistant":
            output_line = OUTPUT_PREFIX + _one_line(text)
            if pending_input is not None:
                blocks.append(f"{pending_input}\n{output_line}")
                pending_input = None
            else:
                blocks.append(output_line)
        else:  # user, tool, anything else: an input
            if pending_input is not None:
                blocks.append(pending_input)
            pending_input = INPUT_PREFIX + _one_line(text)
    sections = ["\n".join(preamble)] if preamble else []
    sections.extend(blocks)
    if pending_input is not None:
        sections.append(f"{pending_input}\n{OUTPUT_PREFIX}")
    return "\n\n".join(sections)
