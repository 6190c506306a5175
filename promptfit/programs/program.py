"""Programs: graphs of modules that can be evaluated, trained, saved and loaded.

Three ways to build one, as in Keras:

* functional: ``pf.Program(inputs=..., outputs=...)`` from symbolic calls;
* subclassing: ``class P(pf.Program)`` with ``async def call(self, inputs)``;
* :class:`Sequential`: a list of single-input modules.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from promptfit.data.data_model import DataModel
from promptfit.errors import ConfigurationError, SerializationError, VariableValidationError
from promptfit.modules.input import InputModule
from promptfit.modules.module import Module, Node, SymbolicDataModel
from promptfit.programs.functional_config import ProgramGraph, functional_config, graph_from_config
from promptfit.saving import program_io
from promptfit.training.trainer import Trainer

__all__ = ["Program", "ProgramGraph", "Sequential"]


def _coerce_input(value: Any, data_model: type[DataModel], program: str) -> Any:
    """Accept a dict (or another model with the same fields) where a data model is expected,
    as ``evaluate`` and ``predict`` do; anything that does not fit is a DataError."""
    if value is None or isinstance(value, data_model):
        return value
    from promptfit.data.adapters import to_data_model

    return to_data_model(value, data_model, what=f"{program}'s input")


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _toposort(outputs: list[SymbolicDataModel]) -> list[Node]:
    order: list[Node] = []
    state: dict[int, int] = {}  # 1 = visiting, 2 = done

    def visit(node: Node) -> None:
        mark = state.get(id(node))
        if mark == 2:
            return
        if mark == 1:
            raise ConfigurationError("The program graph has a cycle.")
        state[id(node)] = 1
        for parent in node.inputs:
            if parent.node is None:
                raise ConfigurationError(f"{parent!r} was not produced by a module or pf.Input.")
            visit(parent.node)
        state[id(node)] = 2
        order.append(node)

    for output in outputs:
        if not isinstance(output, SymbolicDataModel) or output.node is None:
            raise ConfigurationError(
                f"Program outputs must come from module calls on pf.Input, got {output!r}."
            )
        visit(output.node)
    return order


class Program(Trainer, Module):
    """A trainable graph of modules.

    Args:
        inputs: A symbolic input from :func:`promptfit.Input` (or a list of them).
        outputs: The symbolic output(s) of module calls.
        name: The program's name.
        description: What the program does.
        input_data_model: For subclassed programs, the input class used to read dicts and
            DataFrames in ``fit``/``evaluate``/``predict`` (functional programs know it).
        output_data_model: Likewise for ``y``.

    Example:
        ```python
        import promptfit as pf

        class Query(pf.DataModel):
            question: str

        class Answer(pf.DataModel):
            answer: str

        async def build(lm: pf.LanguageModel) -> pf.Program:
            inputs = pf.Input(data_model=Query)
            outputs = await pf.Generator(data_model=Answer, language_model=lm)(inputs)
            return pf.Program(inputs=inputs, outputs=outputs, name="calc")
        ```
    """

    def __init__(
        self,
        inputs: SymbolicDataModel | Sequence[SymbolicDataModel] | None = None,
        outputs: SymbolicDataModel | Sequence[SymbolicDataModel] | None = None,
        name: str | None = None,
        description: str | None = None,
        trainable: bool = True,
        input_data_model: type[DataModel] | None = None,
        output_data_model: type[DataModel] | None = None,
    ) -> None:
        Module.__init__(self, name=name, description=description, trainable=trainable)
        Trainer.__init__(self)
        self._functional = inputs is not None or outputs is not None
        self._nodes: list[Node] = []
        self._input_symbols: list[SymbolicDataModel] = []
        self._output_symbols: list[SymbolicDataModel] = []
        self._single_output = not isinstance(outputs, list | tuple)
        self.input_data_model = input_data_model
        self.output_data_model = output_data_model
        if self._functional:
            self._build_graph(_as_list(inputs), _as_list(outputs))
        self.built = True

    # -- graph ---------------------------------------------------------------------------
    def _build_graph(
        self, inputs: list[SymbolicDataModel], outputs: list[SymbolicDataModel]
    ) -> None:
        if not inputs or not outputs:
            raise ConfigurationError("A functional Program needs both `inputs` and `outputs`.")
        for symbol in inputs:
            if not (
                isinstance(symbol, SymbolicDataModel)
                and symbol.node is not None
                and isinstance(symbol.node.module, InputModule)
            ):
                raise ConfigurationError(
                    f"Program inputs must come from pf.Input(...), got {symbol!r}."
                )
        self._nodes = _toposort(outputs)
        reachable_inputs = {id(n) for n in self._nodes if isinstance(n.module, InputModule)}
        for symbol in inputs:
            if id(symbol.node) not in reachable_inputs:
                self._nodes.insert(0, symbol.node)  # type: ignore[arg-type]
        missing = [
            n.module.name
            for n in self._nodes
            if isinstance(n.module, InputModule) and all(n is not s.node for s in inputs)
        ]
        if missing:
            raise ConfigurationError(
                f"The outputs depend on inputs not passed to `inputs`: {missing}."
            )
        self._input_symbols = inputs
        self._output_symbols = outputs
        names: dict[str, Module] = {}
        for node in self._nodes:
            other = names.get(node.module.name)
            if other is not None and other is not node.module:
                raise ConfigurationError(
                    f"Two different modules are named {node.module.name!r}; module names must be "
                    "unique within a program."
                )
            names[node.module.name] = node.module
        for module_name, module in names.items():
            if not isinstance(module, InputModule):
                self._modules[module_name] = module
        if self.input_data_model is None and len(inputs) == 1:
            self.input_data_model = inputs[0].data_model
        if self.output_data_model is None and len(outputs) == 1:
            self.output_data_model = outputs[0].data_model

    @property
    def modules(self) -> list[Module]:
        """Every module of the program (excluding inputs), in execution order."""
        return [m for m in self.iter_modules() if m is not self and not isinstance(m, InputModule)]

    def get_module(self, name: str | None = None, index: int | None = None) -> Module:
        """Find a module by name or by position in :attr:`modules`."""
        modules = self.modules
        if name is not None:
            for module in modules:
                if module.name == name:
                    return module
            raise ConfigurationError(
                f"No module named {name!r}; available: {[m.name for m in modules]}."
            )
        if index is not None:
            try:
                return modules[index]
            except IndexError:
                raise ConfigurationError(
                    f"Module index {index} out of range (program has {len(modules)})."
                ) from None
        raise ConfigurationError("Pass `name` or `index` to get_module().")

    async def call(self, *inputs: Any) -> Any:
        if not self._functional:
            raise NotImplementedError(
                f"{type(self).__name__} is a subclassed Program: implement `async def call`."
            )
        if len(inputs) != len(self._input_symbols):
            raise ConfigurationError(
                f"{self.name} takes {len(self._input_symbols)} input(s), got {len(inputs)}."
            )
        values: dict[int, Any] = {
            id(symbol): _coerce_input(value, symbol.data_model, self.name)
            for symbol, value in zip(self._input_symbols, inputs, strict=True)
        }
        for node in self._nodes:
            if isinstance(node.module, InputModule):
                continue
            args = [values[id(symbol)] for symbol in node.inputs]
            output = None
            for arg in args:
                if arg is None:
                    break
            else:
                output = await node.module(*args)
            for symbol in node.outputs:
                values[id(symbol)] = output
        results = [values[id(symbol)] for symbol in self._output_symbols]
        return results[0] if self._single_output else results

    def compute_output_spec(self, *inputs: SymbolicDataModel) -> type[DataModel]:
        if self.output_data_model is None:
            raise ConfigurationError(f"{self.name} has no single output data model.")
        return self.output_data_model

    # -- variables -----------------------------------------------------------------------
    def get_variables(self, trainable_only: bool = False) -> dict[str, Any]:
        """A deep copy of every variable's value, keyed by ``"module/variable"``."""
        variables = self.trainable_variables if trainable_only else self.variables
        return {v.path: copy.deepcopy(v.value) for v in variables}

    def set_variables(self, values: dict[str, Any], strict: bool = True) -> None:
        """Assign many variables at once; all are validated before any is changed.

        Args:
            values: ``{"module/variable": value}`` as returned by :meth:`get_variables`.
            strict: Raise if a key names no variable of this program.
        """
        by_path = {v.path: v for v in self.variables}
        unknown = sorted(set(values) - set(by_path))
        if unknown and strict:
            raise VariableValidationError(
                f"Unknown variables {unknown}; this program has {sorted(by_path)}."
            )
        for path, value in values.items():
            if path in by_path:
                by_path[path]._validate(value)
        for path, value in values.items():
            if path in by_path:
                by_path[path].assign(value)

    # -- saving ------------------------------------------------------------------------
    def save(self, filepath: str | os.PathLike[str]) -> Path:
        """Save structure and variables as JSON (atomic; never holds API keys)."""
        return program_io.save_program(self, filepath)

    def save_variables(
        self, filepath: str | os.PathLike[str], module_names: list[str] | None = None
    ) -> Path:
        """Save only the variables (optionally only those of ``module_names``)."""
        return program_io.save_variables(self, filepath, module_names)

    def load_variables(self, filepath: str | os.PathLike[str], strict: bool = True) -> None:
        """Load variables saved by :meth:`save_variables` or :meth:`save`."""
        program_io.load_variables(self, filepath, strict=strict)

    # -- description ---------------------------------------------------------------------
    def summary(self) -> str:
        """A table of modules, their types and trainable variables (also printed)."""
        lines = [f'Program: "{self.name}"', f"{'Module':<28}{'Type':<20}{'Variables':<30}"]
        for module in self.modules:
            names = ", ".join(v.name for v in module.own_variables) or "-"
            lines.append(f"{module.name:<28}{type(module).__name__:<20}{names:<30}")
        lines.append(f"Trainable variables: {len(self.trainable_variables)}")
        text = "\n".join(lines)
        print(text)
        return text

    @property
    def graph(self) -> ProgramGraph | None:
        """The functional graph (nodes, inputs, outputs), read-only; ``None`` for a
        subclassed program, whose structure is its ``call`` method."""
        if not self._functional:
            return None
        return ProgramGraph(
            nodes=tuple(self._nodes),
            inputs=tuple(self._input_symbols),
            outputs=tuple(self._output_symbols),
            single_output=self._single_output,
        )

    def get_config(self) -> dict[str, Any]:
        graph = self.graph
        if graph is None:
            return Module.get_config(self)
        return functional_config(graph, self.name, self.description, self.trainable)

    @classmethod
    def from_config(cls, config: dict[str, Any], **kwargs: Any) -> Program:
        """Rebuild a program from :meth:`get_config` (``kwargs`` as in ``pf.load_program``).

        A subclassed program (one with a ``call`` method) is rebuilt as ``cls(**config)``, so
        its ``get_config()`` must return every constructor argument, as in Keras; override
        ``from_config(config, language_models=None, api_key=None, safe_mode=True)`` too when
        it builds language models.
        """
        if "nodes" in config:
            graph = graph_from_config(config, **kwargs)
            if cls.__init__ is Program.__init__:
                return cls(**graph)
            # A subclass with its own __init__ (Sequential takes `layers`): the graph in the
            # file is the program, so it is attached with Program.__init__ directly.
            program = cls.__new__(cls)
            Program.__init__(program, **graph)
            return program
        if kwargs.get("language_models"):
            raise SerializationError(
                f"{cls.__name__} is a subclassed program that builds its own language models, "
                "so `language_models=` would be ignored. Override "
                f"{cls.__name__}.from_config(config, language_models=None, **kwargs) to use "
                "them, or build the program in code and call program.load_variables(path)."
            )
        try:
            return cls(**config)
        except TypeError as error:
            raise SerializationError(
                f"Cannot rebuild {cls.__name__} from its saved config {sorted(config)}: "
                f"{error}. A subclassed program's get_config() must return every argument its "
                "__init__ needs (and from_config() must accept them), as in Keras; or build "
                "the program in code and call program.load_variables(path), which reads the "
                "variables from the same file."
            ) from error


class Sequential(Program):
    """A program made of a chain of single-input modules.

    Args:
        layers: ``[pf.Input(data_model=...), module, module, ...]``; the first element may also
            be given as ``input_data_model=``.
        name: The program's name.

    Example:
        ```python
        import promptfit as pf

        class Query(pf.DataModel):
            question: str

        class Answer(pf.DataModel):
            answer: str

        lm = pf.LanguageModel(model="openai/my-model", api_base="http://127.0.0.1:8000/v1")
        program = pf.Sequential(
            [pf.Input(data_model=Query), pf.Generator(data_model=Answer, language_model=lm)],
            name="calc",
        )
        ```
    """

    def __init__(
        self,
        layers: Iterable[Module | SymbolicDataModel],
        name: str | None = None,
        description: str | None = None,
        input_data_model: type[DataModel] | None = None,
        trainable: bool = True,
    ) -> None:
        items = list(layers)
        if items and isinstance(items[0], SymbolicDataModel):
            inputs = items.pop(0)
        elif input_data_model is not None:
            from promptfit.modules.input import Input

            inputs = Input(data_model=input_data_model)
        else:
            raise ConfigurationError(
                "Sequential needs pf.Input(data_model=...) as its first element or "
                "`input_data_model=`."
            )
        if not items:
            raise ConfigurationError("Sequential needs at least one module after the input.")
        x: SymbolicDataModel = inputs  # type: ignore[assignment]
        for module in items:
            if not isinstance(module, Module):
                raise ConfigurationError(f"Sequential elements must be modules, got {module!r}.")
            x = module._symbolic_call(x)
        super().__init__(
            inputs=inputs, outputs=x, name=name, description=description, trainable=trainable
        )
