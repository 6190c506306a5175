"""A functional program's graph as a config, and back (beside Program, as Keras keeps
``functional_from_config`` beside ``Functional``).

Why here and not in ``saving/``: the graph is Program's own structure. Reading it from
``saving/`` meant reaching into Program's private attributes and importing Program back, a
two-way coupling. Program now exposes its graph through :attr:`Program.graph`
(a :class:`ProgramGraph`), this module turns that into a config and back, and ``saving/`` keeps
only what is about files: the format, the safe-mode checks and the atomic write. This module
does not import :mod:`promptfit.programs.program`, so Program can import it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from promptfit.data.schema import resolve_data_model
from promptfit.errors import SerializationError
from promptfit.modules.generator import Generator, data_model_config
from promptfit.modules.input import Input, InputModule
from promptfit.modules.module import Module, Node, SymbolicDataModel
from promptfit.saving.program_io import expect, language_model_from_file, serializable_name
from promptfit.saving.registry import get_registered_object
from promptfit.saving.safe_mode import normalize_allowed_providers

if TYPE_CHECKING:
    from promptfit.language_models.language_model import LanguageModel

__all__ = ["ProgramGraph", "functional_config", "graph_from_config"]


@dataclass(frozen=True)
class ProgramGraph:
    """The graph of a functional program, read-only.

    Attributes:
        nodes: Every module call (inputs included), in execution order.
        inputs: The program's symbolic inputs, in call order.
        outputs: The program's symbolic outputs.
        single_output: ``True`` when the program returns one value, not a list.
    """

    nodes: tuple[Node, ...]
    inputs: tuple[SymbolicDataModel, ...]
    outputs: tuple[SymbolicDataModel, ...]
    single_output: bool


def functional_config(
    graph: ProgramGraph, name: str, description: str | None, trainable: bool
) -> dict[str, Any]:
    """The config of a functional program: its modules and how their calls connect.

    Modules are stored once by name (a module called twice appears in two nodes); a node names
    its inputs by the index of the node that produced them.
    """
    symbol_index = {id(node.outputs[0]): i for i, node in enumerate(graph.nodes)}
    modules: dict[str, dict[str, Any]] = {}
    node_configs: list[dict[str, Any]] = []
    for node in graph.nodes:
        module = node.module
        if isinstance(module, InputModule):
            node_configs.append(
                {"input": module.name, "data_model": data_model_config(module.data_model)}
            )
            continue
        if module.name not in modules:
            modules[module.name] = {
                "class_name": serializable_name(module),
                "config": module.get_config(),
            }
        node_configs.append(
            {"module": module.name, "inputs": [symbol_index[id(s)] for s in node.inputs]}
        )
    return {
        "name": name,
        "description": description,
        "trainable": trainable,
        "modules": modules,
        "nodes": node_configs,
        "inputs": [symbol_index[id(s)] for s in graph.inputs],
        "outputs": [symbol_index[id(s)] for s in graph.outputs],
        "single_output": graph.single_output,
    }


def graph_from_config(
    config: dict[str, Any],
    language_models: dict[str, LanguageModel] | None = None,
    api_key: str | None = None,
    safe_mode: bool = True,
    allowed_providers: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Rebuild the modules and calls of :func:`functional_config`'s output.

    Returns the keyword arguments of ``Program.__init__`` (``inputs``, ``outputs``, ``name``,
    ``description``, ``trainable``); :meth:`Program.from_config` builds the program from them,
    because only it knows which class to build and how.

    Raises:
        SerializationError: a defect in the config (named, never a raw ``KeyError``).
        UnsafeFileError: ``safe_mode`` refused one of its language models.
    """
    allowed = normalize_allowed_providers(allowed_providers)
    lms = dict(language_models or {})
    expect(config, dict, "the program config")
    specs = expect(config.get("modules"), dict, "'modules'")
    modules: dict[str, Module] = {}
    for name, spec in specs.items():
        expect(spec, dict, f"module {name!r}")
        modules[name] = _build_module(
            expect(spec.get("class_name"), str, f"module {name!r}'s class_name"),
            spec.get("config"),
            lms,
            api_key,
            safe_mode,
            allowed,
        )
    symbols: list[Any] = []
    for node in expect(config.get("nodes"), list, "'nodes'"):
        expect(node, dict, "a node")
        if "input" in node:
            spec = expect(node.get("data_model"), dict, "an input's data_model")
            data_model = resolve_data_model(**spec)
            symbols.append(Input(data_model=data_model, name=node["input"]))
        else:
            args = [symbols[_index(i, symbols)] for i in expect(node["inputs"], list, "inputs")]
            if node.get("module") not in modules:
                raise SerializationError(f"a node calls the unknown module {node.get('module')!r}")
            symbols.append(modules[node["module"]]._symbolic_call(*args))
    inputs = [symbols[_index(i, symbols)] for i in expect(config.get("inputs"), list, "'inputs'")]
    outputs = [
        symbols[_index(i, symbols)] for i in expect(config.get("outputs"), list, "'outputs'")
    ]
    if not inputs or not outputs:
        raise SerializationError("the program has no inputs or no outputs")
    return {
        "inputs": inputs[0] if len(inputs) == 1 else inputs,
        "outputs": outputs[0] if config.get("single_output", True) else outputs,
        "name": config.get("name"),
        "description": config.get("description"),
        "trainable": config.get("trainable", True),
    }


def _build_module(
    class_name: str,
    config: Any,
    lms: dict[str, LanguageModel],
    api_key: str | None,
    safe_mode: bool,
    allowed_providers: frozenset[str],
) -> Module:
    """One module from the registry; a generator's language model goes through the file's
    safe-mode checks (or is one of the caller's own clients)."""
    cls = get_registered_object(class_name, Module)
    if not isinstance(config, dict):
        raise SerializationError(f"module {class_name!r} has a config that is not an object")
    if issubclass(cls, Generator):
        lm = language_model_from_file(
            config.get("language_model"),
            lms,
            api_key=api_key,
            safe_mode=safe_mode,
            allowed_providers=allowed_providers,
            what=f"module {class_name!r}",
        )
        return cls.from_config(config, language_model=lm)
    return cls.from_config(config)


def _index(value: Any, symbols: list[Any]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(symbols):
        raise SerializationError(f"a node refers to symbol {value!r:.40}, which does not exist")
    return value
