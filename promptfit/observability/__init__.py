"""Observability: trace programs, modules and LM calls, and track fits, with MLflow.

Nothing here imports MLflow until observability is enabled, so ``import promptfit`` stays fast
and tracing costs nothing while it is off.

Example:
    ```python
    import promptfit as pf

    pf.enable_observability()  # embedded ./mlflow.db, no server needed
    pf.disable_observability()
    ```
"""

from promptfit.observability.enable import (
    disable_observability,
    enable_observability,
    observability_settings,
)
from promptfit.observability.mlflow_backend import MLflowSpanBackend
from promptfit.observability.registry import load_prompts
from promptfit.observability.spans import set_span_backend, span, span_backend

__all__ = [
    "MLflowSpanBackend",
    "disable_observability",
    "enable_observability",
    "load_prompts",
    "observability_settings",
    "set_span_backend",
    "span",
    "span_backend",
]
