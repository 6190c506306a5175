"""Save and load programs and their variables as versioned JSON.

This module owns the file: its format tag and version, the safe-mode checks on what a file may
ask for, and the atomic write. The graph inside ``config`` is the program's own business
(:mod:`promptfit.programs.functional_config`); this module never imports ``programs``, so
``Program.save`` can import it without a cycle.

Files are written atomically. Loading reads data only: classes are found in the registry
(promptfit's own and those registered with ``register_serializable``), data models are rebuilt
from their JSON schemas when their class is not registered, and no template engine ever
evaluates text from a file. API keys are never written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from promptfit._version import __version__
from promptfit.errors import SerializationError
from promptfit.language_models.language_model import LanguageModel
from promptfit.saving.atomic import atomic_write_json
from promptfit.saving.documents import DocumentError, parse_document, read_regular_file
from promptfit.saving.registry import get_registered_object, registered_name
from promptfit.saving.safe_mode import check_file_language_model, normalize_allowed_providers
from promptfit.saving.secrets import register_language_models, scrub_credentials

if TYPE_CHECKING:
    from promptfit.programs.program import Program

__all__ = [
    "FORMAT_VERSION",
    "LoadableProgram",
    "expect",
    "language_model_from_file",
    "load_program",
    "load_variables",
    "read_json_file",
    "save_program",
    "save_variables",
    "serializable_name",
]

FORMAT_VERSION = 1
PROGRAM_FORMAT = "promptfit.program"
VARIABLES_FORMAT = "promptfit.variables"


def serializable_name(obj: Any) -> str:
    """The registry name a file uses for ``obj``'s class.

    Raises:
        SerializationError: the class is not registered (the message says how to register it).
    """
    name = registered_name(type(obj))
    if name is None:
        raise SerializationError(
            f"{type(obj).__qualname__} is not registered; decorate it with "
            "@pf.saving.register_serializable() so it can be saved and loaded."
        )
    return name


def expect(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """``value`` if it has the JSON type ``kind`` (a bool is never a number here), else a
    :class:`SerializationError` naming ``what``: a file's defects are reported, never raised as
    ``KeyError``/``TypeError`` from deep inside the loader."""
    if not isinstance(value, kind) or isinstance(value, bool):
        raise SerializationError(f"{what} must be {_KIND_NAMES.get(kind, kind)}, got {value!r:.80}")
    return value


_KIND_NAMES: dict[Any, str] = {
    dict: "an object",
    list: "a list",
    int: "an integer",
    str: "a string",
}


def language_model_from_file(
    lm_config: Any,
    lms: dict[str, LanguageModel],
    *,
    api_key: str | None,
    safe_mode: bool,
    allowed_providers: frozenset[str] = frozenset(),
    what: str = "a module",
) -> LanguageModel:
    """The client a file's language model config asks for, through the safe-mode checks.

    ``lms`` holds the caller's own clients by ``name`` (never checked: the caller chose them)
    and, as the file is read, the clients already rebuilt by config, so generators that share
    a language model in the file share one client after loading.

    Raises:
        SerializationError: the config is not an object.
        UnsafeFileError: ``safe_mode`` refused it (the message names what and the fix).
    """
    if not isinstance(lm_config, dict):
        raise SerializationError(f"{what} has a language_model that is not an object")
    key = json.dumps(lm_config, sort_keys=True)
    lm = lms.get(lm_config.get("name", "")) or lms.get(key)
    if lm is None:
        if safe_mode:
            check_file_language_model(lm_config, allowed_providers)
        lm = LanguageModel.from_config(lm_config, api_key=api_key)
        lms[key] = lm
    return lm


@runtime_checkable
class LoadableProgram(Protocol):
    """What :func:`load_program` needs from the class a file names (``pf.Program`` and its
    subclasses have it; a module such as ``Generator`` does not).

    Why a protocol and not ``issubclass(cls, Program)``: ``saving`` sits below ``programs``
    (Program's own ``save`` writes through this module), so it names the methods it calls
    instead of importing Program back.
    """

    @classmethod
    def from_config(cls, config: dict[str, Any], **kwargs: Any) -> Any: ...

    def set_variables(self, values: dict[str, Any], strict: bool = True) -> None: ...

    def get_compile_config(self) -> dict[str, Any] | None: ...


def read_json_file(path: str | os.PathLike[str], expected_format: str) -> dict[str, Any]:
    """Read a promptfit JSON file and check its format tag and version."""
    try:
        raw = read_regular_file(path)
    except FileNotFoundError:
        raise SerializationError(f"No such file: {path}.") from None
    except OSError as error:
        raise SerializationError(f"Cannot read {path}: {error}.") from error
    try:
        return parse_document(raw, expected_format, FORMAT_VERSION)
    except DocumentError as error:
        raise SerializationError(f"{path} {error}.") from error


def save_program(program: Program, path: str | os.PathLike[str]) -> Path:
    """Write the program's structure and variables to ``path`` (JSON, atomic).

    The structure goes through :func:`~promptfit.saving.secrets.scrub_credentials`: no
    credential-bearing litellm argument (headers, cloud credentials, tokens in URLs) is written.
    """
    register_language_models(program.all_language_models())
    document = {
        "format": PROGRAM_FORMAT,
        "version": FORMAT_VERSION,
        "promptfit_version": __version__,
        "class_name": serializable_name(program),
        "config": program.get_config(),
        "compile_config": program.get_compile_config() if program.compiled else None,
        "variables": program.get_variables(),
    }
    return atomic_write_json(path, scrub_credentials(document, keep=("variables",)))


def load_program(
    path: str | os.PathLike[str],
    language_models: dict[str, LanguageModel] | None = None,
    api_key: str | None = None,
    safe_mode: bool = True,
    allowed_providers: Iterable[str] | None = None,
    prompts: dict[str, str] | None = None,
) -> Program:
    """Load a program saved with :meth:`Program.save`.

    Args:
        path: The JSON file.
        language_models: Replacement clients by LM ``name`` (e.g. to point a saved program at
            another endpoint); others are rebuilt from the file.
        api_key: Key for the rebuilt clients (files never hold keys; litellm also reads the
            provider's usual environment variables).
        safe_mode: As in ``keras.saving.load_model``: refuse what could make a file from
            someone else harmful. Here that is a language model that would send requests
            anywhere but a loopback address (judged with litellm's own routing: ``api_base``,
            URLs inside the model string, provider defaults) unless its provider is in
            ``allowed_providers``, litellm arguments beyond generation parameters, or a
            response cache outside the working directory; each could send your prompts and
            key to a server the file chooses. Pass ``safe_mode=False`` for files you trust, or
            give those models in ``language_models`` (which are never checked).
        allowed_providers: litellm provider names (``["openai", "anthropic"]``) whose hosted
            endpoints a file may use in safe mode. Only the provider's own endpoint is
            allowed: a file that also sets a non-loopback ``api_base`` is still refused.
        prompts: ``{module_name: "prompts:/<name>@<alias>"}``: take these generators' prompts
            from the MLflow Prompt Registry instead of the file (validated like the file's
            own values; see :func:`promptfit.observability.load_prompts`).

    Raises:
        UnsafeFileError: ``safe_mode`` refused the file (the message names what and the fix).
        SerializationError: the file is not a readable promptfit program (any defect in it,
            never a raw ``KeyError``/``TypeError``...).

    Example:
        ```python
        import promptfit as pf

        lm = pf.LanguageModel(model="openai/my-model", api_base="http://127.0.0.1:8000/v1")
        # program = pf.load_program("calc.json", language_models={lm.name: lm})
        # program = pf.load_program("gpt.json", allowed_providers=["openai"])
        ```
    """
    allowed = normalize_allowed_providers(allowed_providers)
    data = read_json_file(path, PROGRAM_FORMAT)
    try:
        class_name = expect(data.get("class_name"), str, "class_name")
        cls = get_registered_object(class_name)
        if not (isinstance(cls, type) and issubclass(cls, LoadableProgram)):
            raise SerializationError(f"{class_name!r} is not a Program.")
        kwargs: dict[str, Any] = {
            "language_models": language_models,
            "api_key": api_key,
            "safe_mode": safe_mode,
        }
        if allowed:  # subclassed programs' own from_config may predate this argument
            kwargs["allowed_providers"] = allowed
        program = cls.from_config(expect(data.get("config"), dict, "'config'"), **kwargs)
        program.set_variables(expect(data.get("variables", {}), dict, "'variables'"))
    except SerializationError as error:
        if str(path) in str(error):
            raise
        raise type(error)(f"{path}: {error}") from error
    except (Exception, RecursionError) as error:
        raise SerializationError(
            f"{path} is not a valid promptfit program ({type(error).__name__}: "
            f"{str(error)[:300]}). Save it again with program.save(), or fix the file."
        ) from error
    if prompts is not None:  # the registry's prompts win over the file's
        from promptfit.observability.registry import load_prompts

        load_prompts(program, prompts)
    return program


def save_variables(
    program: Program, path: str | os.PathLike[str], module_names: list[str] | None = None
) -> Path:
    """Write the variables (optionally only those of ``module_names``) to ``path``."""
    variables = program.get_variables()
    if module_names is not None:
        known = {m.name for m in program.modules}
        unknown = sorted(set(module_names) - known)
        if unknown:
            raise SerializationError(f"Unknown modules {unknown}; the program has {sorted(known)}.")
        variables = {k: v for k, v in variables.items() if k.split("/", 1)[0] in module_names}
    return atomic_write_json(
        path,
        {
            "format": VARIABLES_FORMAT,
            "version": FORMAT_VERSION,
            "promptfit_version": __version__,
            "program": program.name,
            "variables": variables,
        },
    )


def load_variables(program: Program, path: str | os.PathLike[str], strict: bool = True) -> None:
    """Assign the variables stored in ``path`` (a variables file or a program file)."""
    try:
        data = read_json_file(path, VARIABLES_FORMAT)
    except SerializationError as not_variables:
        if f"format tag: {PROGRAM_FORMAT!r}" not in str(not_variables):
            # Corrupt, unreadable, or a variables file with a bad version: say that, not "is
            # not a program file".
            raise
        data = read_json_file(path, PROGRAM_FORMAT)
    variables = data.get("variables")
    if not isinstance(variables, dict):
        raise SerializationError(f"{path} has no 'variables' object; the file is corrupt.")
    program.set_variables(variables, strict=strict)
