"""``pf.FunctionModule``: plain Python (sync or async) as a step of a program."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import anyio.to_thread

from promptfit.data.data_model import DataModel
from promptfit.data.schema import resolve_data_model
from promptfit.errors import ConfigurationError, SerializationError
from promptfit.modules.generator import data_model_config
from promptfit.modules.module import Module, SymbolicDataModel, unique_name
from promptfit.saving.registry import get_registered_object, registered_name

__all__ = ["FunctionModule"]


class FunctionModule(Module):
    """Run a Python function on the inputs and validate its result as ``data_model``.

    The function receives the input DataModel instances (``None`` inputs are never passed: the
    module returns ``None`` when an upstream module failed) and returns a DataModel or a dict.

    Args:
        function: A sync or async callable. To save and load a program that uses it, register
            it with :func:`promptfit.saving.register_serializable` (a loaded file never imports
            code by name).
        data_model: The output data model class.
        name: Module name.
        run_in_thread: Run a sync function in a worker thread (for blocking code).

    Example:
        ```python
        import promptfit as pf

        class Text(pf.DataModel):
            text: str

        def shout(x: Text) -> Text:
            return Text(text=x.text.upper())

        module = pf.FunctionModule(shout, data_model=Text)
        ```
    """

    def __init__(
        self,
        function: Callable[..., Any],
        data_model: type[DataModel],
        name: str | None = None,
        description: str | None = None,
        run_in_thread: bool = False,
        trainable: bool = True,
    ) -> None:
        if not callable(function):
            raise ConfigurationError(f"`function` must be callable, got {function!r}.")
        super().__init__(
            name=name or _default_name(function),
            description=description,
            trainable=trainable,
        )
        self.function = function
        self.data_model = data_model
        self.run_in_thread = run_in_thread
        self._is_async = inspect.iscoroutinefunction(function)

    def compute_output_spec(self, *inputs: SymbolicDataModel) -> type[DataModel]:
        return self.data_model

    async def call(self, *inputs: Any) -> DataModel | None:
        if any(x is None for x in inputs):
            return None
        if self._is_async:
            result = await self.function(*inputs)
        elif self.run_in_thread:
            result = await anyio.to_thread.run_sync(self.function, *inputs)
        else:
            result = self.function(*inputs)
        if result is None or isinstance(result, self.data_model):
            return result
        return self.data_model.model_validate(
            result.model_dump() if isinstance(result, DataModel) else result
        )

    def get_config(self) -> dict[str, Any]:
        name = registered_name(self.function)
        if name is None:
            raise SerializationError(
                f"{self.name}: function {getattr(self.function, '__qualname__', self.function)!r} "
                "is not registered; decorate it with @pf.saving.register_serializable() so the "
                "program can be saved and loaded without importing code by name."
            )
        return {
            **super().get_config(),
            "function": name,
            "data_model": data_model_config(self.data_model),
            "run_in_thread": self.run_in_thread,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FunctionModule:
        config = dict(config)
        function = get_registered_object(config.pop("function"))
        data_model = resolve_data_model(**config.pop("data_model"))
        return cls(function=function, data_model=data_model, **config)


def _default_name(function: Callable[..., Any]) -> str | None:
    name = getattr(function, "__name__", "")
    return unique_name(name) if name.isidentifier() else None
