"""``pf.Generator``: ask a language model for a typed output.

A generator owns one trainable variable, ``prompt``: ``{"instructions": str, "examples": [...]}``
where each example is ``{"inputs": {...}, "outputs": {...}}``. The variable's schema is built
from the generator's own data models, so an optimizer cannot assign an example whose output
does not fit the output model. The system message and the few-shot messages are rendered once
per variable version, not once per call.
"""

from __future__ import annotations

from typing import Any

import pydantic
from pydantic import create_model

from promptfit.data.data_model import DataModel, json_schema_of, json_schema_text, registry_name
from promptfit.data.schema import resolve_data_model
from promptfit.errors import ConfigurationError, DataError
from promptfit.language_models.language_model import LanguageModel
from promptfit.language_models.request import build_messages, render_system
from promptfit.modules.module import Module, SymbolicDataModel
from promptfit.modules.traces import _TRACES, record_trace
from promptfit.variables.overrides import language_model_override, variable_override

__all__ = ["Generator", "data_model_config"]


def _recording_traces() -> bool:
    """Whether a ``collect_traces`` block is recording this example's module calls."""
    return _TRACES.get() is not None


def data_model_config(cls: type[DataModel]) -> dict[str, Any]:
    """How a data model class is saved: its registry name and its JSON schema."""
    return {"name": registry_name(cls), "schema": json_schema_of(cls)}


def _prompt_schema(
    name: str, input_model: type[pydantic.BaseModel] | None, output_model: type[pydantic.BaseModel]
) -> type[pydantic.BaseModel]:
    example = create_model(
        f"{name}_example",
        inputs=(input_model or dict[str, Any], ...),
        outputs=(output_model, ...),
    )
    return create_model(
        f"{name}_prompt",
        instructions=(str, ""),
        examples=(list[example], []),  # type: ignore[valid-type]
    )


class Generator(Module):
    """Generate an instance of ``data_model`` from the input with a language model.

    Args:
        data_model: The output :class:`~promptfit.DataModel` class.
        language_model: The :class:`~promptfit.LanguageModel` to call.
        instructions: The initial instructions (trainable).
        examples: Initial few-shot examples: ``[{"inputs": {...}, "outputs": {...}}]``.
        name: Module name (unique within a program).
        description: Free text.
        trainable: Whether optimizers may change the prompt.

    Example:
        ```python
        import promptfit as pf

        class Query(pf.DataModel):
            question: str

        class Answer(pf.DataModel):
            answer: str

        async def build(lm: pf.LanguageModel) -> pf.Program:
            inputs = pf.Input(data_model=Query)
            outputs = await pf.Generator(
                data_model=Answer, language_model=lm, instructions="Answer with a number."
            )(inputs)
            return pf.Program(inputs=inputs, outputs=outputs, name="calc")
        ```
    """

    _span_kind = "LLM"

    def __init__(
        self,
        data_model: type[DataModel],
        language_model: LanguageModel,
        instructions: str = "",
        examples: list[dict[str, Any]] | None = None,
        name: str | None = None,
        description: str | None = None,
        trainable: bool = True,
        input_data_model: type[DataModel] | None = None,
    ) -> None:
        super().__init__(name=name, description=description, trainable=trainable)
        if not (isinstance(data_model, type) and issubclass(data_model, pydantic.BaseModel)):
            raise ConfigurationError(
                f"{self.name}: `data_model` must be a pf.DataModel subclass, got {data_model!r}."
            )
        if not isinstance(language_model, LanguageModel):
            raise ConfigurationError(
                f"{self.name}: `language_model` must be a pf.LanguageModel, got "
                f"{type(language_model).__name__}."
            )
        self.language_model = language_model
        self.data_model = data_model
        self.output_data_model = self._output_model(data_model)
        self.input_data_model: type[DataModel] | None = None
        self.prompt = self.add_variable(
            "prompt",
            {"instructions": instructions, "examples": examples or []},
            schema=_prompt_schema(self.name, None, self.output_data_model),
        )
        self._rendered: tuple[int, str, list[tuple[dict[str, Any], dict[str, Any]]]] | None = None
        self._override_renders: dict[int, tuple[Any, str, list[Any]]] = {}
        if input_data_model is not None:
            self.build(input_data_model)

    def _output_model(self, data_model: type[DataModel]) -> type[DataModel]:
        """The model the LM must produce (ChainOfThought adds a ``thinking`` field)."""
        return data_model

    def build(self, *input_data_models: type[DataModel]) -> None:
        if not input_data_models:
            raise ConfigurationError(
                f"{self.name} does not know its input data model yet, so a dict cannot be "
                "checked: pass `input_data_model=` when creating it, or call it (or build a "
                "program with it) on a DataModel first."
            )
        if len(input_data_models) != 1:
            raise ConfigurationError(
                f"{self.name}: a Generator takes exactly one input data model, got "
                f"{len(input_data_models)}. Combine inputs first with a pf.FunctionModule."
            )
        self.input_data_model = input_data_models[0]
        value = self.prompt.value
        self.prompt.schema = _prompt_schema(
            self.name, self.input_data_model, self.output_data_model
        )
        self.prompt.assign(value)
        self.built = True

    def compute_output_spec(self, *inputs: SymbolicDataModel) -> type[DataModel]:
        return self.output_data_model

    def _render(self) -> tuple[str, list[tuple[dict[str, Any], dict[str, Any]]]]:
        override = variable_override(self.prompt.path)
        if override is not None:
            return self._render_override(override)
        version = self.prompt.version
        if self._rendered is None or self._rendered[0] != version:
            value = self.prompt.value
            system = render_system(value["instructions"], json_schema_text(self.output_data_model))
            pairs = [(ex["inputs"], ex["outputs"]) for ex in value["examples"]]
            self._rendered = (version, system, pairs)
        return self._rendered[1], self._rendered[2]

    def _render_override(
        self, value: dict[str, Any]
    ) -> tuple[str, list[tuple[dict[str, Any], dict[str, Any]]]]:
        """Render a candidate's prompt (an optimizer scoring it), cached per candidate object.

        The cache keeps a reference to each value, so an ``id`` is never reused while cached.
        """
        cached = self._override_renders.get(id(value))
        if cached is not None and cached[0] is value:
            return cached[1], cached[2]
        if len(self._override_renders) >= 64:
            self._override_renders.clear()
        system = render_system(value["instructions"], json_schema_text(self.output_data_model))
        pairs = [(ex["inputs"], ex["outputs"]) for ex in value["examples"]]
        self._override_renders[id(value)] = (value, system, pairs)
        return system, pairs

    def messages(self, inputs: DataModel) -> list[dict[str, str]]:
        """The chat messages this generator sends for ``inputs`` (for inspection and tests)."""
        system, pairs = self._render()
        return build_messages(system, pairs, inputs.model_dump(mode="json"))

    async def call(self, *inputs: Any) -> DataModel | None:
        if len(inputs) != 1:
            raise ConfigurationError(f"{self.name}: a Generator takes exactly one input.")
        (value,) = inputs
        if value is None:
            return None
        system, pairs = self._render()
        if isinstance(value, dict) and self.input_data_model is not None:
            from promptfit.data.adapters import to_data_model

            value = to_data_model(value, self.input_data_model, what=f"{self.name}'s input")
        if not isinstance(value, pydantic.BaseModel):
            raise DataError(
                f"{self.name}: expected a DataModel instance or a dict as input, "
                f"got {type(value).__name__}."
            )
        inputs_json = value.model_dump(mode="json")
        language_model = language_model_override() or self.language_model
        generation = await language_model.generate(
            build_messages(system, pairs, inputs_json), self.output_data_model
        )
        output = generation.value
        if _recording_traces():  # the JSON of the output is only needed for a trace
            record_trace(
                self.name,
                inputs_json,
                output.model_dump(mode="json") if output is not None else None,
            )
        return output  # type: ignore[return-value]

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "data_model": data_model_config(self.data_model),
            "input_data_model": (
                data_model_config(self.input_data_model) if self.input_data_model else None
            ),
            "language_model": self.language_model.get_config(),
            "instructions": self.prompt.value["instructions"],
            "examples": self.prompt.value["examples"],
        }

    @classmethod
    def from_config(
        cls, config: dict[str, Any], language_model: LanguageModel | None = None
    ) -> Generator:
        config = dict(config)
        data_model = resolve_data_model(**config.pop("data_model"))
        input_config = config.pop("input_data_model", None)
        input_model = resolve_data_model(**input_config) if input_config else None
        lm_config = config.pop("language_model")
        lm = language_model or LanguageModel.from_config(lm_config)
        return cls(data_model=data_model, language_model=lm, input_data_model=input_model, **config)
