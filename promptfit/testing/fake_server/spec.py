"""The model-name grammar: ``<brain>?k=v&k=v`` parsed into a :class:`ModelSpec`.

Behaviour is chosen per model name so that tests sharing one server do not interfere; a typo
in an option fails loudly (:class:`ModelSpecError`) instead of silently using a default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from .likes import SERVER_LIKES

__all__ = ["BRAINS", "DEFAULT_PROPOSAL", "ModelSpec", "ModelSpecError", "parse_model"]

BRAINS: frozenset[str] = frozenset({"echo", "arith", "sentiment", "judge", "propose"})


DEFAULT_PROPOSAL = "Answer carefully and precisely."


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
