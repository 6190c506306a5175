"""``pf.ChainOfThought``: a generator that reasons in a ``thinking`` field before answering."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import Field, create_model

from promptfit.data.data_model import DataModel
from promptfit.modules.generator import Generator

__all__ = ["ChainOfThought"]

_THINKING_DESCRIPTION = "Step-by-step reasoning that leads to the answer."


@functools.lru_cache(maxsize=256)
def with_thinking(data_model: type[DataModel]) -> type[DataModel]:
    """``data_model`` with a ``thinking`` string field placed first (so it is generated first)."""
    fields: dict[str, Any] = {"thinking": (str, Field(description=_THINKING_DESCRIPTION))}
    for name, info in data_model.model_fields.items():
        fields[name] = (info.annotation, info)
    return create_model(f"{data_model.__name__}WithThinking", __base__=DataModel, **fields)


class ChainOfThought(Generator):
    """A :class:`~promptfit.Generator` whose output starts with a ``thinking`` field.

    The output instances have every field of ``data_model`` plus ``thinking``; rewards that
    compare answers should mask it out (``ExactMatch(in_mask=["answer"])``) or compare only
    the ground truth's fields, which ``ExactMatch`` does by default.

    Args: see :class:`~promptfit.Generator`.

    Example:
        ```python
        import promptfit as pf

        class Answer(pf.DataModel):
            answer: str

        lm = pf.LanguageModel(model="openai/my-model", api_base="http://127.0.0.1:8000/v1")
        cot = pf.ChainOfThought(data_model=Answer, language_model=lm)
        assert "thinking" in cot.output_data_model.model_fields
        ```
    """

    def _output_model(self, data_model: type[DataModel]) -> type[DataModel]:
        return with_thinking(data_model)
