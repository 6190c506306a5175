"""The base class of every module: a named unit with variables that can be called.

Calling a module on a :class:`SymbolicDataModel` (what :func:`promptfit.Input` returns) records
a node in a graph instead of running anything; that is how functional programs are declared.
Calling it on real data runs :meth:`Module.call`. Modules assigned as attributes of a module are
tracked, so a program (itself a module) sees every variable below it.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from promptfit.data.data_model import DataModel
from promptfit.errors import ConfigurationError
from promptfit.observability.spans import span, span_backend
from promptfit.variables.variable import Variable

__all__ = ["Module", "Node", "SymbolicDataModel"]

_NAME_COUNTERS: defaultdict[str, itertools.count[int]] = defaultdict(itertools.count)
_VALID_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def unique_name(prefix: str) -> str:
    """``prefix``, then ``prefix_1``, ``prefix_2``... (as Keras names layers)."""
    index = next(_NAME_COUNTERS[prefix])
    return prefix if index == 0 else f"{prefix}_{index}"


@dataclass(eq=False)
class Node:
    """One call of a module in a functional graph."""

    module: Module
    inputs: list[SymbolicDataModel]
    outputs: list[SymbolicDataModel] = field(default_factory=list)


class SymbolicDataModel:
    """A placeholder for data of type ``data_model`` flowing through a graph being declared."""

    __slots__ = ("data_model", "name", "node")

    def __init__(
        self, data_model: type[DataModel], node: Node | None = None, name: str = ""
    ) -> None:
        self.data_model = data_model
        self.node = node
        self.name = name

    def __repr__(self) -> str:
        source = self.node.module.name if self.node else "?"
        return f"<SymbolicDataModel {self.data_model.__name__} from {source}>"


class Module:
    """Base class of generators, plain-code modules and programs.

    Subclasses implement ``async def call(self, *inputs)`` returning a :class:`DataModel`
    instance (or ``None`` when the module could not produce one), and
    :meth:`compute_output_spec` returning the output data model class.

    Args:
        name: Unique name within a program (auto-generated from the class name if omitted).
        description: Free text, kept in saved files and summaries.
        trainable: Whether optimizers may change this module's variables.
    """

    def __init__(
        self, name: str | None = None, description: str | None = None, trainable: bool = True
    ) -> None:
        object.__setattr__(self, "_modules", {})
        if name is not None and (not isinstance(name, str) or not _VALID_NAME.match(name)):
            raise ConfigurationError(
                f"Module name {name!r} is invalid: use letters, digits, '_', '-' or '.'."
            )
        self.name = name or unique_name(_snake(type(self).__name__))
        self.description = description
        self._trainable = trainable
        self._variables: dict[str, Variable] = {}
        self.built = False

    # -- tracking ------------------------------------------------------------------------
    def __setattr__(self, key: str, value: Any) -> None:
        modules: dict[str, Module] = self.__dict__.get("_modules", {})
        if isinstance(value, Module) and not key.startswith("__"):
            modules[key] = value
        elif key in modules:
            del modules[key]
        object.__setattr__(self, key, value)

    @property
    def submodules(self) -> list[Module]:
        """Directly tracked child modules, in assignment order."""
        return list(self.__dict__.get("_modules", {}).values())

    def iter_modules(self) -> Iterator[Module]:
        """This module and every module below it, depth first, each once."""
        seen: set[int] = set()
        stack: list[Module] = [self]
        while stack:
            module = stack.pop(0)
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield module
            stack[:0] = module.submodules

    # -- variables -----------------------------------------------------------------------
    def add_variable(
        self, name: str, value: Any, *, schema: Any, trainable: bool = True
    ) -> Variable:
        variable = Variable(value, schema=schema, name=name, trainable=trainable)
        variable.path = f"{self.name}/{name}"
        self._variables[name] = variable
        return variable

    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self._trainable = bool(value)

    @property
    def own_variables(self) -> list[Variable]:
        for variable in self._variables.values():
            variable.path = f"{self.name}/{variable.name}"
        return list(self._variables.values())

    @property
    def variables(self) -> list[Variable]:
        """Every variable of this module and its submodules."""
        return [v for module in self.iter_modules() for v in module.own_variables]

    @property
    def trainable_variables(self) -> list[Variable]:
        return [
            v
            for module in self.iter_modules()
            if module.trainable
            for v in module.own_variables
            if v.trainable
        ]

    @property
    def language_models(self) -> list[Any]:
        """Language models used by this module and its submodules (each once)."""
        seen: dict[int, Any] = {}
        for module in self.iter_modules():
            lm = getattr(module, "language_model", None)
            if lm is not None:
                seen.setdefault(id(lm), lm)
        return list(seen.values())

    # -- calling -------------------------------------------------------------------------
    def compute_output_spec(self, *inputs: SymbolicDataModel) -> type[DataModel]:
        raise NotImplementedError(
            f"{type(self).__name__} cannot be used in a functional graph: implement "
            "compute_output_spec()."
        )

    def build(self, *input_data_models: type[DataModel]) -> None:
        """Hook run once with the input data model classes before the first call."""
        self.built = True

    async def call(self, *inputs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement `async def call`.")

    async def __call__(self, *inputs: Any) -> Any:
        for x in inputs:  # a plain loop: this runs once per module per example
            if isinstance(x, SymbolicDataModel):
                return self._symbolic_call(*inputs)
        if not self.built:
            self.build(*[type(x) for x in inputs if isinstance(x, DataModel)])
        if span_backend() is None:
            return await self.call(*inputs)
        with span(self.name, self._span_kind, _span_inputs(inputs)) as handle:
            output = await self.call(*inputs)
            handle.set_outputs(_span_inputs((output,)))
            return output

    _span_kind = "CHAIN"

    def _symbolic_call(self, *inputs: Any) -> SymbolicDataModel:
        if not all(isinstance(x, SymbolicDataModel) for x in inputs):
            raise ConfigurationError(
                f"{self.name}: mix of symbolic and concrete inputs; in a functional graph every "
                "input must come from pf.Input or another module."
            )
        if not self.built:
            self.build(*[x.data_model for x in inputs])
        output_model = self.compute_output_spec(*inputs)
        node = Node(self, list(inputs))
        output = SymbolicDataModel(output_model, node, name=self.name)
        node.outputs.append(output)
        return output

    # -- serialisation -------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "trainable": self._trainable}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Module:
        return cls(**config)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r}>"


def _span_inputs(values: tuple[Any, ...]) -> Any:
    out = [v.model_dump(mode="json") if isinstance(v, DataModel) else v for v in values]
    return out[0] if len(out) == 1 else out
