"""promptfit: build LLM programs as graphs of modules and train their prompts like Keras models.

Example:
    ```python
    import promptfit as pf

    class Query(pf.DataModel):
        question: str = pf.Field(description="An arithmetic question")

    class Answer(pf.DataModel):
        answer: str = pf.Field(description="The numeric answer")
    ```
"""

from __future__ import annotations

from promptfit import (
    callbacks,
    checkpoints,
    data,
    errors,
    language_models,
    metrics,
    modules,
    optimizers,
    programs,
    rewards,
    saving,
)
from promptfit._version import __version__
from promptfit.data import DataModel, Field
from promptfit.language_models import LanguageModel
from promptfit.modules import (
    ChainOfThought,
    FunctionModule,
    Generator,
    Input,
    Module,
)
from promptfit.observability import disable_observability, enable_observability
from promptfit.programs import Program, Sequential
from promptfit.saving.program_io import load_program
from promptfit.saving.registry import register_serializable as _register
from promptfit.saving.secrets import install_log_filter as _install_log_filter

_install_log_filter()  # the "promptfit" logger never prints a credential

for _cls in (Program, Sequential, Generator, ChainOfThought, FunctionModule):
    _register("promptfit")(_cls)

__all__ = [
    "ChainOfThought",
    "DataModel",
    "Field",
    "FunctionModule",
    "Generator",
    "Input",
    "LanguageModel",
    "Module",
    "Program",
    "Sequential",
    "__version__",
    "callbacks",
    "checkpoints",
    "data",
    "disable_observability",
    "enable_observability",
    "errors",
    "language_models",
    "load_program",
    "metrics",
    "modules",
    "optimizers",
    "programs",
    "rewards",
    "saving",
]
