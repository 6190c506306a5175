"""Structured-output modes: how a request asks for JSON, and how a refusal is recognised.

OpenAI-compatible servers disagree on ``response_format``. OpenAI and recent vLLM accept a
``json_schema`` format; llama.cpp's and llama-cpp-python's servers (and older vLLM) accept only
``json_object``, with the schema in a ``schema`` key that they turn into a grammar; older
gateways accept a bare ``json_object``; some accept no ``response_format`` at all. Worse, they
refuse in different ways: 400 (OpenAI, vLLM, Ollama), 422 (FastAPI validation in front of a
server) or even 500 (llama-cpp-python). So :class:`~promptfit.LanguageModel` negotiates: it
tries the modes of :data:`MODES` best first and steps down when the server says the format is
not supported.

Everything here is a pure function of its arguments: building the request part and judging a
server's error are kept apart from the litellm call, so another transport can reuse them.
Every mode also keeps the schema in the system prompt (see :mod:`.request`), so even the last
one, ``json_text``, tells the model what to produce.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal, cast, get_args

__all__ = [
    "MODES",
    "OutputMode",
    "StructuredOutput",
    "is_format_refusal",
    "lower_mode",
    "mode_of",
    "next_mode",
    "response_format_for",
    "server_message",
]

OutputMode = Literal["json_schema", "json_object_schema", "json_object", "json_text"]
StructuredOutput = Literal["auto", "json_schema", "json_object_schema", "json_object", "json_text"]

# Best first: the order in which ``structured_output="auto"`` tries them.
MODES: tuple[OutputMode, ...] = cast(tuple[OutputMode, ...], get_args(OutputMode))

# Words a server's error uses when it is the response format it does not accept.
_FORMAT_WORDS = (
    "response_format",
    "response format",
    "responseformat",
    "json_schema",
    "json_object",
)
# Statuses a format refusal has been seen with: 400 (OpenAI, vLLM, Ollama), 422 (FastAPI
# validation), 500 (llama-cpp-python), 501 (not implemented). Rate limits, gateway errors and
# auth failures are never a format refusal, whatever their text.
_REFUSAL_STATUSES = frozenset({400, 415, 422, 500, 501})


def _safe_name(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:64] or "output"


def response_format_for(
    mode: OutputMode, name: str, schema: dict[str, Any]
) -> dict[str, Any] | None:
    """The ``response_format`` a request carries in ``mode`` (``None``: send none)."""
    if mode == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {"name": _safe_name(name), "schema": schema, "strict": False},
        }
    if mode == "json_object_schema":
        return {"type": "json_object", "schema": schema}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


def mode_of(request: dict[str, Any]) -> OutputMode:
    """The mode a built request is in (read back from its ``response_format``)."""
    rf = request.get("response_format")
    if not isinstance(rf, dict):
        return "json_text"
    if rf.get("type") == "json_schema":
        return "json_schema"
    return "json_object_schema" if "schema" in rf else "json_object"


def next_mode(mode: OutputMode) -> OutputMode | None:
    """The mode to try after ``mode`` is refused (``None`` after ``json_text``)."""
    index = MODES.index(mode)
    return MODES[index + 1] if index + 1 < len(MODES) else None


def lower_mode(a: OutputMode, b: OutputMode) -> OutputMode:
    """The later (less demanding) of two modes."""
    return a if MODES.index(a) >= MODES.index(b) else b


def _body_text(exc: BaseException) -> str:
    """The error body the server sent, as text (litellm keeps it beside its own message)."""
    body = getattr(exc, "body", None)
    if body is None or body == {}:
        return ""
    if isinstance(body, str):
        return body
    try:
        return json.dumps(body, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(body)


def server_message(exc: BaseException) -> str:
    """The server's own words in an error, without litellm's prefixes, for error messages."""
    message = getattr(exc, "message", None)
    text = message if isinstance(message, str) and message else str(exc)
    # litellm prefixes "litellm.BadRequestError: OpenAIException - " (sometimes twice).
    text = re.sub(r"^(?:litellm\.\w+:\s*)?(?:\w+Error:\s*)?(?:\w+Exception\s*-\s*)?", "", text)
    text = text.strip()
    if re.fullmatch(r"(Error code: \d+)?", text) and (body := _body_text(exc)):
        # A body litellm could not read a message from (a FastAPI 422 ``detail`` list).
        text = f"{text} - {body}" if text else body
    return text[:1000]


def is_format_refusal(exc: BaseException, mode: OutputMode) -> bool:
    """Whether ``exc`` is the server refusing the ``response_format`` of a ``mode`` request.

    Recognised whatever the status the server chose (400, 422 or 500 are all seen) as long as
    its message names the response format or a format type: such a refusal will not change
    on a retry, so it must not be treated as a transient server error.
    """
    if mode == "json_text":
        return False  # no response_format was sent: nothing to refuse
    if type(exc).__name__ == "UnsupportedParamsError":
        return True  # litellm itself knows the provider takes no response_format
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int) or status not in _REFUSAL_STATUSES:
        return False
    text = f"{getattr(exc, 'message', '')} {exc} {_body_text(exc)}".lower()
    return any(word in text for word in _FORMAT_WORDS)
