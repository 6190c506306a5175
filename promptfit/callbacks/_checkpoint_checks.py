"""Argument checks of the checkpointing callbacks (``ProgramCheckpoint``, ``BackupAndRestore``).

Why at construction: a checkpoint setting that is wrong is otherwise found at the end of the
first epoch, after its LM calls were paid for. Each check raises
:class:`~promptfit.errors.ConfigurationError` naming the argument, the value and what to pass.
Generic number checks shared with other callbacks live in the callbacks' common helper; what
is here is specific to saving checkpoints and backups.
"""

from __future__ import annotations

from collections.abc import Sequence

from promptfit.callbacks.callback import Callback
from promptfit.errors import ConfigurationError

__all__ = [
    "check_distinct_names",
    "check_module_names",
    "check_on_best",
    "check_tolerances",
]


def check_module_names(module_names: Sequence[str] | None) -> list[str] | None:
    """A non-empty list of module names without duplicates (order kept), or ``None``."""
    if module_names is None:
        return None
    if isinstance(module_names, str) or not all(isinstance(n, str) and n for n in module_names):
        raise ConfigurationError(
            "ProgramCheckpoint: `module_names` must be a list of module names, got "
            f"{module_names!r}."
        )
    names = list(dict.fromkeys(module_names))
    if not names:
        raise ConfigurationError("ProgramCheckpoint: `module_names` must not be empty.")
    return names


def check_tolerances(tolerances: Sequence[int] | None) -> list[int] | None:
    """Sorted distinct positive patiences, or ``None`` for none."""
    if tolerances is None:
        return None
    if isinstance(tolerances, int | str) or not all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in tolerances
    ):
        raise ConfigurationError(
            "ProgramCheckpoint: `tolerances` must be a list of positive integers "
            f"(epochs without improvement), got {tolerances!r}."
        )
    return sorted(set(tolerances)) or None


def check_distinct_names(
    filepath: str,
    fields: Sequence[str],
    save_freq: str | int,
    keeps_several: bool,
) -> None:
    """``{batch}`` needs batch saves; retention needs a name per checkpoint.

    ``keep_top_k`` and ``tolerances`` keep several checkpoints, so each save must get its own
    file: ``{epoch}`` in the template, and ``{batch}`` too with an integer ``save_freq``.
    """
    if "batch" in fields and save_freq == "epoch":
        raise ConfigurationError(
            "ProgramCheckpoint: {batch} in `filepath` is only filled when `save_freq` is a "
            "number of batches; remove it or pass save_freq=N."
        )
    if keeps_several:
        needed = ["epoch"] + (["batch"] if save_freq != "epoch" else [])
        missing = [f for f in needed if f not in fields]
        if missing:
            raise ConfigurationError(
                "ProgramCheckpoint: `keep_top_k` and `tolerances` keep several checkpoints, "
                f"so `filepath` must give each one its own name; add "
                f"{', '.join('{' + f + '}' for f in missing)} to {filepath!r}."
            )


def check_on_best(on_best: Sequence[Callback] | None) -> list[Callback]:
    """The ``on_best`` children as a list of callbacks."""
    children = list(on_best or [])
    for child in children:
        if not isinstance(child, Callback):
            raise ConfigurationError(
                "ProgramCheckpoint: `on_best` must hold pf.callbacks.Callback instances, "
                f"got {type(child).__name__}."
            )
    return children
