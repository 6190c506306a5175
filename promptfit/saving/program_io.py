"""Save and load programs and their variables as versioned JSON.

Files are written atomically. Loading reads data only: classes are found in the registry
(promptfit's own and those registered with ``register_serializable``), data models are rebuilt
from their JSON schemas when their class is not registered, and no template engine ever
evaluates text from a file. API keys are never written.
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import os
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from promptfit import __version__
from promptfit.errors import SerializationError, UnsafeFileError
from promptfit.language_models.language_model import LanguageModel
from promptfit.saving.atomic import atomic_write_json
from promptfit.saving.documents import DocumentError, parse_document
from promptfit.saving.registry import get_registered_object, registered_name

if TYPE_CHECKING:
    from promptfit.modules.module import Module
    from promptfit.programs.program import Program

__all__ = [
    "FORMAT_VERSION",
    "load_program",
    "load_variables",
    "read_json_file",
    "save_program",
    "save_variables",
]

FORMAT_VERSION = 1
PROGRAM_FORMAT = "promptfit.program"
VARIABLES_FORMAT = "promptfit.variables"


def _class_name(obj: Any) -> str:
    name = registered_name(type(obj))
    if name is None:
        raise SerializationError(
            f"{type(obj).__qualname__} is not registered; decorate it with "
            "@pf.saving.register_serializable() so it can be saved and loaded."
        )
    return name


def functional_config(program: Program) -> dict[str, Any]:
    """The graph of a functional program: its modules and how their calls connect."""
    from promptfit.modules.input import InputModule

    nodes = program._nodes
    symbol_index = {id(node.outputs[0]): i for i, node in enumerate(nodes)}
    modules: dict[str, dict[str, Any]] = {}
    node_configs = []
    for node in nodes:
        module = node.module
        if isinstance(module, InputModule):
            from promptfit.modules.generator import data_model_config

            node_configs.append(
                {"input": module.name, "data_model": data_model_config(module.data_model)}
            )
            continue
        if module.name not in modules:
            modules[module.name] = {
                "class_name": _class_name(module),
                "config": module.get_config(),
            }
        node_configs.append(
            {"module": module.name, "inputs": [symbol_index[id(s)] for s in node.inputs]}
        )
    return {
        "name": program.name,
        "description": program.description,
        "trainable": program.trainable,
        "modules": modules,
        "nodes": node_configs,
        "inputs": [symbol_index[id(s)] for s in program._input_symbols],
        "outputs": [symbol_index[id(s)] for s in program._output_symbols],
        "single_output": program._single_output,
    }


# Generation parameters a file may set in safe mode: they change answers and cost, never where
# a request (and its key) goes. Anything else litellm accepts (``base_url``, ``extra_headers``,
# ``api_version``, cloud credentials...) can redirect traffic or carry secrets.
_SAFE_LITELLM_KWARGS = frozenset(
    {
        "top_p",
        "top_k",
        "min_p",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "logit_bias",
        "reasoning_effort",
    }
)


# The client's own settings (everything get_config() writes besides extra litellm arguments).
_LM_CONFIG_FIELDS = frozenset(inspect.signature(LanguageModel).parameters) - {
    "api_key",
    "litellm_kwargs",
}


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_file_language_model(config: dict[str, Any]) -> None:
    """Refuse, in safe mode, what a file could use to steer traffic or write elsewhere.

    Loopback endpoints are allowed: a file cannot make a server appear on your machine, and
    local servers (vLLM, llama.cpp, Ollama, the test server) are the common case.
    """
    name = config.get("name") or config.get("model")
    problems: list[str] = []
    api_base = config.get("api_base")
    if api_base is not None and not (isinstance(api_base, str) and _is_loopback(api_base)):
        problems.append(f"it sends requests to api_base={api_base!r}")
    unsafe = sorted(set(config) - _LM_CONFIG_FIELDS - _SAFE_LITELLM_KWARGS)
    if unsafe:
        problems.append(f"it sets the litellm arguments {unsafe}")
    cache = config.get("cache")
    if isinstance(cache, str) and (PurePath(cache).is_absolute() or ".." in PurePath(cache).parts):
        problems.append(f"it writes its response cache to {cache!r}")
    if problems:
        raise UnsafeFileError(
            f"The file's language model {name!r} is refused in safe mode: {'; and '.join(problems)}"
            ". A file from someone else could use this to send your API key (or one litellm "
            "finds in your environment) to their server. If you trust the file, load it with "
            f"safe_mode=False; otherwise pass your own client: language_models={{{name!r}: lm}}."
        )


def _build_module(
    class_name: str,
    config: dict[str, Any],
    lms: dict[str, LanguageModel],
    api_key: str | None,
    safe_mode: bool,
) -> Module:
    from promptfit.modules.generator import Generator
    from promptfit.modules.module import Module

    cls = get_registered_object(class_name, Module)
    if issubclass(cls, Generator):
        lm_config = config["language_model"]
        key = json.dumps(lm_config, sort_keys=True)
        lm = lms.get(lm_config.get("name", "")) or lms.get(key)
        if lm is None:
            if safe_mode:
                _check_file_language_model(lm_config)
            lm = LanguageModel.from_config(lm_config, api_key=api_key)
            lms[key] = lm
        return cls.from_config(config, language_model=lm)
    return cls.from_config(config)


def program_from_functional_config(
    cls: type[Program],
    config: dict[str, Any],
    language_models: dict[str, LanguageModel] | None = None,
    api_key: str | None = None,
    safe_mode: bool = True,
) -> Program:
    """Rebuild a functional (or Sequential) program from :func:`functional_config`'s output.

    A subclass with its own ``__init__`` (``Sequential`` takes ``layers``) is built without
    calling it: the graph in the file is the program, so it is attached with
    ``Program.__init__`` directly.
    """
    from promptfit.data.schema import resolve_data_model
    from promptfit.modules.input import Input
    from promptfit.programs.program import Program

    lms = dict(language_models or {})
    try:
        modules = {
            name: _build_module(spec["class_name"], spec["config"], lms, api_key, safe_mode)
            for name, spec in config["modules"].items()
        }
        symbols: list[Any] = []
        for node in config["nodes"]:
            if "input" in node:
                data_model = resolve_data_model(**node["data_model"])
                symbols.append(Input(data_model=data_model, name=node["input"]))
            else:
                args = [symbols[i] for i in node["inputs"]]
                symbols.append(modules[node["module"]]._symbolic_call(*args))
        inputs = [symbols[i] for i in config["inputs"]]
        outputs = [symbols[i] for i in config["outputs"]]
    except (KeyError, IndexError, TypeError) as exc:
        raise SerializationError(f"The program file is malformed: {exc!r}.") from exc
    graph = {
        "inputs": inputs[0] if len(inputs) == 1 else inputs,
        "outputs": outputs[0] if config.get("single_output", True) else outputs,
        "name": config["name"],
        "description": config.get("description"),
        "trainable": config.get("trainable", True),
    }
    if cls.__init__ is Program.__init__:
        return cls(**graph)
    program = cls.__new__(cls)
    Program.__init__(program, **graph)
    return program


def read_json_file(path: str | os.PathLike[str], expected_format: str) -> dict[str, Any]:
    """Read a promptfit JSON file and check its format tag and version."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SerializationError(f"No such file: {path}.") from None
    try:
        return parse_document(text, expected_format, FORMAT_VERSION)
    except DocumentError as error:
        raise SerializationError(f"{path} {error}.") from error


def save_program(program: Program, path: str | os.PathLike[str]) -> Path:
    """Write the program's structure and variables to ``path`` (JSON, atomic)."""
    return atomic_write_json(
        path,
        {
            "format": PROGRAM_FORMAT,
            "version": FORMAT_VERSION,
            "promptfit_version": __version__,
            "class_name": _class_name(program),
            "config": program.get_config(),
            "compile_config": program.get_compile_config() if program.compiled else None,
            "variables": program.get_variables(),
        },
    )


def load_program(
    path: str | os.PathLike[str],
    language_models: dict[str, LanguageModel] | None = None,
    api_key: str | None = None,
    safe_mode: bool = True,
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
            someone else harmful. Here that is a language model the file would rebuild with a
            non-loopback ``api_base``, litellm arguments beyond generation parameters, or a
            response cache outside the working directory; each could send your key to a server
            the file chooses. Pass ``safe_mode=False`` for files you trust, or give those
            models in ``language_models`` (which are never checked).
        prompts: ``{module_name: "prompts:/<name>@<alias>"}``: take these generators' prompts
            from the MLflow Prompt Registry instead of the file (validated like the file's
            own values; see :func:`promptfit.observability.load_prompts`).

    Raises:
        UnsafeFileError: ``safe_mode`` refused the file (the message names what and the fix).
        SerializationError: the file is not a readable promptfit program.

    Example:
        ```python
        import promptfit as pf

        lm = pf.LanguageModel(model="openai/my-model", api_base="http://127.0.0.1:8000/v1")
        # program = pf.load_program("calc.json", language_models={lm.name: lm})
        ```
    """
    from promptfit.programs.program import Program

    data = read_json_file(path, PROGRAM_FORMAT)
    cls = get_registered_object(data.get("class_name", ""), Program)
    program = cls.from_config(
        data["config"], language_models=language_models, api_key=api_key, safe_mode=safe_mode
    )
    program.set_variables(data.get("variables", {}))
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
    except SerializationError:
        data = read_json_file(path, PROGRAM_FORMAT)
    program.set_variables(data["variables"], strict=strict)
