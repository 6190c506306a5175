"""``pf.Input``: the entry point of a functional program."""

from __future__ import annotations

from typing import Any

from promptfit.data.data_model import DataModel
from promptfit.errors import ConfigurationError
from promptfit.modules.module import Module, Node, SymbolicDataModel

__all__ = ["Input", "InputModule"]


class InputModule(Module):
    """The module behind :func:`Input`; it has no variables and passes data through."""

    def __init__(self, data_model: type[DataModel], name: str | None = None, **kwargs: Any) -> None:
        if not (isinstance(data_model, type) and issubclass(data_model, DataModel)):
            raise ConfigurationError(
                f"`data_model` must be a pf.DataModel subclass, got {data_model!r}."
            )
        super().__init__(name=name, **kwargs)
        self.data_model = data_model
        self.built = True

    def compute_output_spec(self, *inputs: SymbolicDataModel) -> type[DataModel]:
        return self.data_model

    async def call(self, *inputs: Any) -> Any:
        return inputs[0]


def Input(data_model: type[DataModel], name: str | None = None) -> SymbolicDataModel:
    """Declare a program input of type ``data_model``.

    Example:
        ```python
        import promptfit as pf

        class Query(pf.DataModel):
            question: str

        inputs = pf.Input(data_model=Query)
        ```
    """
    module = InputModule(data_model, name=name)
    node = Node(module, [])
    symbol = SymbolicDataModel(data_model, node, name=module.name)
    node.outputs.append(symbol)
    return symbol
