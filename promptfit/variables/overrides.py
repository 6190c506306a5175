"""Run a program with other variable values (or another language model) without changing it.

Why: a search optimizer scores several candidate variable sets on the same examples at once.
Assigning each candidate to the program in turn (``set_variables``) forces the candidates to
run one after another, because they would all share the program's one set of variables.
Instead, each candidate's scoring task sets a context variable holding its values; a
:class:`~promptfit.Generator` (and :attr:`~promptfit.variables.Variable.value`) reads the
override first. asyncio gives every task a copy of its parent's context, so all the examples
of one candidate see that candidate, and concurrent candidates never see each other's values.

The same mechanism lets a teacher language model produce traces with the student's prompts
(:class:`~promptfit.optimizers.BootstrapFewShot` with ``teacher=LanguageModel(...)``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

__all__ = [
    "language_model_override",
    "override_language_model",
    "override_variables",
    "variable_override",
]

_VARIABLES: ContextVar[dict[str, Any] | None] = ContextVar("promptfit_variables", default=None)
_LANGUAGE_MODEL: ContextVar[Any] = ContextVar("promptfit_language_model", default=None)


def variable_override(path: str) -> Any:
    """The value overriding variable ``path`` (``"module/variable"``) here, or ``None``."""
    values = _VARIABLES.get()
    if values is None:
        return None
    return values.get(path)


def language_model_override() -> Any:
    """The language model every generator must use here instead of its own, or ``None``."""
    return _LANGUAGE_MODEL.get()


@contextlib.contextmanager
def override_variables(values: dict[str, Any] | None) -> Iterator[None]:
    """Within the block (and tasks started in it), variables read ``values[path]``.

    ``values`` maps ``"module/variable"`` to a value as returned by
    ``Program.get_variables()``; it must already be valid for each variable's schema (an
    optimizer builds it from validated values). Variables not named keep their own value.
    """
    token = _VARIABLES.set(values)
    try:
        yield
    finally:
        _VARIABLES.reset(token)


@contextlib.contextmanager
def override_language_model(language_model: Any) -> Iterator[None]:
    """Within the block (and tasks started in it), every generator calls ``language_model``."""
    token = _LANGUAGE_MODEL.set(language_model)
    try:
        yield
    finally:
        _LANGUAGE_MODEL.reset(token)
