"""The language model client's settings, checked at construction.

Every bad argument is a typed error that names the fix, raised when the client is built (not on
the first call of a run). Split out of ``language_model.py`` (one concern per module).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Literal, get_args

from promptfit.errors import ConfigurationError, LMConfigurationError
from promptfit.language_models._litellm import authenticating_provider, get_litellm
from promptfit.language_models.structured import MODES, StructuredOutput, server_message

__all__ = [
    "STRUCTURED_OUTPUTS",
    "TRANSPORTS",
    "Transport",
    "check_arguments",
    "check_route",
    "is_jsonable",
    "is_number",
    "replica_bases",
]

STRUCTURED_OUTPUTS: tuple[str, ...] = get_args(StructuredOutput)

Transport = Literal["auto", "litellm", "http"]
TRANSPORTS: tuple[str, ...] = get_args(Transport)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_arguments(
    *,
    max_concurrency: Any,
    temperature: Any,
    max_tokens: Any,
    timeout: Any,
    max_retries: Any,
    retry_min_wait: Any,
    retry_max_wait: Any,
    cache: Any,
    structured_output: Any,
    structured_output_mode: Any,
) -> None:
    """Typed errors, each naming the fix, for the client's own settings."""

    def positive_int(name: str, value: Any, minimum: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            hint = f" (pass {name}={int(value)})" if _is_integer_text(value) else ""
            raise ConfigurationError(
                f"`{name}` must be an integer >= {minimum}, got {value!r}{hint}."
            )

    positive_int("max_concurrency", max_concurrency, 1)
    positive_int("max_retries", max_retries, 0)
    if max_tokens is not None:
        positive_int("max_tokens", max_tokens, 1)
    if not is_number(temperature) or temperature < 0:
        raise ConfigurationError(f"`temperature` must be a number >= 0, got {temperature!r}.")
    if not is_number(timeout) or timeout <= 0:
        raise ConfigurationError(
            f"`timeout` must be a number of seconds > 0, got {timeout!r} (e.g. timeout=60)."
        )
    for name, value in (("retry_min_wait", retry_min_wait), ("retry_max_wait", retry_max_wait)):
        if not is_number(value) or value < 0:
            raise ConfigurationError(f"`{name}` must be a number of seconds >= 0, got {value!r}.")
    if retry_min_wait > retry_max_wait:
        raise ConfigurationError(
            f"`retry_min_wait` ({retry_min_wait}) must not exceed `retry_max_wait` "
            f"({retry_max_wait})."
        )
    if not isinstance(cache, bool | str | os.PathLike):
        raise ConfigurationError(
            f"`cache` must be True, False or a file path for a persistent cache, got {cache!r}."
        )
    if not isinstance(cache, bool):
        # An empty path or a directory would only fail (and warn) at the first call; say so
        # now, with the fix. "" in particular is the working directory itself.
        text = os.fspath(cache)
        if not isinstance(text, str) or not text.strip() or os.path.isdir(text):
            raise ConfigurationError(
                f"`cache` must be the path of a database file, got {cache!r} "
                f"({'a directory' if text and os.path.isdir(text) else 'an empty path'}); e.g. "
                "cache='lm_cache.sqlite', or cache=True for promptfit's shared cache."
            )
    if structured_output not in STRUCTURED_OUTPUTS:
        raise ConfigurationError(
            f"`structured_output` must be one of {', '.join(map(repr, STRUCTURED_OUTPUTS))}, "
            f"got {structured_output!r}."
        )
    if structured_output_mode is not None and structured_output_mode not in MODES:
        raise ConfigurationError(
            f"`structured_output_mode` must be None or one of {', '.join(map(repr, MODES))}, "
            f"got {structured_output_mode!r}."
        )


def _is_integer_text(value: Any) -> bool:
    return isinstance(value, str) and value.strip().isdigit()


def check_route(model: str, api_base: str | None, litellm_kwargs: dict[str, Any]) -> None:
    """Refuse at construction a model string that litellm cannot send anywhere.

    Raises:
        LMConfigurationError: litellm finds no provider for ``model`` (otherwise every call
            of the run would fail the same way).
    """
    provider = litellm_kwargs.get("custom_llm_provider")
    if authenticating_provider(model, provider if isinstance(provider, str) else None):
        return  # resolving it would start the provider's login flow (see authenticating_provider)
    try:
        get_litellm().get_llm_provider(model=model, custom_llm_provider=provider, api_base=api_base)
    except Exception as exc:
        raise LMConfigurationError(
            f"litellm cannot route model={model!r} "
            f"({server_message(exc).splitlines()[0].rstrip('. ')}). "
            "Name the provider in the model string, e.g. 'openai/gpt-4o-mini' or "
            "'ollama/llama3'; for your own OpenAI-compatible server use "
            "model='openai/<served name>' with api_base='http://host:port/v1'; for the "
            "embedded model use 'local/gemma-3-270m'."
        ) from exc


def replica_bases(api_base: Any) -> list[str]:
    """``api_base`` as a list of URLs (empty for none).

    Raises:
        ConfigurationError: not a URL string, nor a non-empty list of distinct URL strings.
    """
    if api_base is None:
        return []
    if isinstance(api_base, str):
        return [api_base]
    if isinstance(api_base, list | tuple) and api_base:
        bases = list(api_base)
        if all(isinstance(b, str) and b for b in bases) and len(set(bases)) == len(bases):
            return bases
    raise ConfigurationError(
        f"`api_base` must be a URL string or a non-empty list of distinct URL strings (one "
        f"per replica), got {api_base!r}."
    )


def is_jsonable(value: Any) -> bool:
    """Whether ``get_config`` can write ``value`` (extra litellm arguments may be objects)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
