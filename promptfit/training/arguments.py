"""Argument checks shared by ``fit``, ``evaluate``, ``predict`` and the optimizers.

Every check runs before the first LM call and raises :class:`~promptfit.errors.ConfigurationError`
naming the argument, the value and what is expected. Python's loose types are why this module
exists: ``True`` is an ``int`` (``epochs=True`` would train one epoch), ``0.5 < 1`` lets
``initial_epoch=0.5`` through a range check, ``"0.5" < 1.0`` raises a bare ``TypeError``, and a
single callback not in a list fails deep inside the callback list.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from promptfit.errors import ConfigurationError

__all__ = [
    "check_callbacks",
    "check_fit_arguments",
    "check_int",
    "check_number",
    "check_optional_batch_size",
    "check_verbose",
]

_VERBOSE = ("auto", 0, 1, 2)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(
    name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``value`` as an ``int`` (never a bool, float or string) within the bounds."""
    if not _is_int(value):
        raise ConfigurationError(
            f"`{name}` must be an integer, got {value!r:.60} ({type(value).__name__})."
        )
    if minimum is not None and value < minimum:
        raise ConfigurationError(f"`{name}` must be >= {minimum}, got {value}.")
    if maximum is not None and value > maximum:
        raise ConfigurationError(f"`{name}` must be <= {maximum}, got {value}.")
    return int(value)


def check_number(
    name: str, value: Any, *, minimum: float | None = None, below: float | None = None
) -> float:
    """``value`` as a finite ``float`` (not a bool or string), ``minimum <= value < below``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(
            f"`{name}` must be a finite number, got {value!r:.60} ({type(value).__name__})."
        )
    if minimum is not None and value < minimum:
        raise ConfigurationError(f"`{name}` must be >= {minimum}, got {value!r}.")
    if below is not None and value >= below:
        raise ConfigurationError(f"`{name}` must be < {below}, got {value!r}.")
    return float(value)


def check_optional_batch_size(name: str, value: Any, default: int) -> int:
    """``None`` means ``default``; otherwise a positive integer (``0`` is not ``None``)."""
    if value is None:
        return default
    return check_int(name, value, minimum=1)


def check_verbose(verbose: Any) -> Any:
    """``"auto"``, 0, 1 or 2 (the string ``"0"`` is accepted as 0, as before)."""
    if verbose == "0" or (verbose in _VERBOSE and not isinstance(verbose, bool | float)):
        return verbose
    raise ConfigurationError(
        f"`verbose` must be 'auto', 0 (silent), 1 (progress bar) or 2 (one line per epoch), "
        f"got {verbose!r:.60}."
    )


def check_callbacks(callbacks: Any) -> Any:
    """``None``, a list/tuple of callbacks, or a ``CallbackList``."""
    from promptfit.callbacks.callback import Callback
    from promptfit.callbacks.callback_list import CallbackList

    if callbacks is None or isinstance(callbacks, CallbackList):
        return callbacks
    if isinstance(callbacks, Callback):
        raise ConfigurationError(
            f"`callbacks` must be a list; wrap the single callback: "
            f"callbacks=[{type(callbacks).__name__}(...)]."
        )
    if not isinstance(callbacks, Sequence) or isinstance(callbacks, str | bytes):
        raise ConfigurationError(
            f"`callbacks` must be a list of pf.callbacks.Callback, got {type(callbacks).__name__}."
        )
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise ConfigurationError(
                f"`callbacks` must hold pf.callbacks.Callback instances, got "
                f"{type(callback).__name__}."
            )
    if len({id(c) for c in callbacks}) != len(callbacks):
        # One instance called twice per event: a History of epochs [0, 0], two saves per
        # checkpoint, a backup restored twice.
        twice = next(c for i, c in enumerate(callbacks) if any(c is d for d in callbacks[:i]))
        raise ConfigurationError(
            f"`callbacks` holds the same {type(twice).__name__} instance twice; pass each "
            "callback once."
        )
    from promptfit.callbacks.backup_and_restore import BackupAndRestore

    backups = [c for c in callbacks if isinstance(c, BackupAndRestore)]
    if len(backups) > 1:
        raise ConfigurationError(
            f"`callbacks` holds {len(backups)} BackupAndRestore callbacks; a fit resumes from one "
            "backup (pass double_checkpoint=True to BackupAndRestore to keep a second copy)."
        )
    return callbacks


def check_fit_arguments(
    *,
    epochs: Any,
    initial_epoch: Any,
    validation_split: Any,
    seed: Any,
    verbose: Any,
    callbacks: Any,
    shuffle: Any,
    validation_data: Any,
) -> None:
    """Every ``fit`` argument that can be checked without the data."""
    check_int("epochs", epochs, minimum=1)
    check_int("initial_epoch", initial_epoch, minimum=0)
    if initial_epoch >= epochs:
        raise ConfigurationError(
            f"`initial_epoch` ({initial_epoch}) must be in [0, epochs={epochs})."
        )
    check_number("validation_split", validation_split, minimum=0.0, below=1.0)
    if seed is not None:
        check_int("seed", seed)
    check_verbose(verbose)
    check_callbacks(callbacks)
    if not isinstance(shuffle, bool):
        raise ConfigurationError(f"`shuffle` must be True or False, got {shuffle!r:.60}.")
    if validation_data is not None and (
        not isinstance(validation_data, tuple | list) or len(validation_data) != 2
    ):
        from promptfit.errors import DataError

        raise DataError("`validation_data` must be a tuple (x_val, y_val).")
