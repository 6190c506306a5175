"""Trainable variables: JSON values guarded by a schema.

A variable is what an optimizer changes between epochs: a generator's instructions and its
few-shot examples. :meth:`Variable.assign` validates every new value against the variable's
pydantic schema, so an optimizer (or a hand-edited checkpoint) can never put a value in a prompt
that the module cannot use. Values are stored as plain JSON so they can be saved, diffed and
restored exactly.
"""

from __future__ import annotations

import copy
from typing import Any

import pydantic

from promptfit.errors import VariableValidationError
from promptfit.variables.overrides import variable_override

__all__ = ["Variable"]


class Variable:
    """A named, schema-validated JSON value.

    Args:
        value: The initial value (a dict or an instance of ``schema``).
        schema: A pydantic model class describing valid values.
        name: The variable's name, unique within its module.
        trainable: Whether optimizers may change it.

    Example:
        ```python
        import pydantic
        from promptfit.variables import Variable

        class Prompt(pydantic.BaseModel):
            instructions: str

        v = Variable({"instructions": "Be brief."}, schema=Prompt, name="prompt")
        v.assign({"instructions": "Be very brief."})
        assert v.version == 1
        ```
    """

    def __init__(
        self,
        value: Any,
        *,
        schema: type[pydantic.BaseModel],
        name: str,
        trainable: bool = True,
    ) -> None:
        self.schema = schema
        self.name = name
        self.trainable = trainable
        self.path = name
        self._value: dict[str, Any] = self._validate(value)
        self.version = 0

    def _validate(self, value: Any) -> dict[str, Any]:
        try:
            model = value if isinstance(value, self.schema) else self.schema.model_validate(value)
        except pydantic.ValidationError as exc:
            raise VariableValidationError(
                f"Value for variable {self.path!r} does not match its schema "
                f"{self.schema.__name__}: {exc.errors(include_url=False)}"
            ) from exc
        return model.model_dump(mode="json")

    @property
    def value(self) -> dict[str, Any]:
        """The current value. Treat it as read-only; change it with :meth:`assign`.

        Inside :func:`~promptfit.variables.overrides.override_variables` (an optimizer scoring
        a candidate), the candidate's value for this variable's path is returned instead.
        """
        override = variable_override(self.path)
        return self._value if override is None else override

    def assign(self, value: Any) -> None:
        """Validate ``value`` and make it the variable's value.

        Raises:
            VariableValidationError: ``value`` does not match the schema.
        """
        self._value = self._validate(value)
        self.version += 1

    def numpy(self) -> dict[str, Any]:
        """A deep copy of the value (Keras' name for "get the concrete value")."""
        return copy.deepcopy(self._value)

    def json_schema(self) -> dict[str, Any]:
        return self.schema.model_json_schema()

    def __repr__(self) -> str:
        return f"<Variable {self.path} trainable={self.trainable} version={self.version}>"
