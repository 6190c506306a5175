"""Server likes: how real servers refuse a ``response_format`` they do not support.

``like=vllm`` (or ``ollama``, ``openai``, ``llamacpp``, ``fastapi``) makes the fake server answer
an unsupported structured-output mode with that server's status and error body, so the
client's format negotiation is tested against the errors it will really meet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SERVER_LIKES", "ServerLike", "format_of"]


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
