"""Reading a run's examples: ``x``/``y`` as the program's data models, and fit's validation split.

Kept apart from the trainer because it is the one place that decides what a run's data is,
and both ``fit`` and ``evaluate`` (and the fingerprint a backup is checked against) depend on
it being decided the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from promptfit.data.adapters import to_data_models, to_targets
from promptfit.errors import DataError

if TYPE_CHECKING:
    from promptfit.programs.program import Program

__all__ = ["fit_data", "read_x", "read_y"]


def read_x(program: Program, x: Any) -> list[Any]:
    """``x`` as the program's input data models (DataModels as given when it declares none)."""
    if x is None:
        raise DataError("`x` is required.")
    model = getattr(program, "input_data_model", None)
    if model is None:
        rows = list(x)
        if not all(hasattr(r, "model_dump") for r in rows):
            raise DataError(
                f"{program.name} does not declare `input_data_model`; pass DataModel "
                "instances, or give the Program `input_data_model=`."
            )
        return rows
    return to_data_models(x, model, "x")


def read_y(program: Program, y: Any, n: int) -> list[Any]:
    """``y`` as JSON targets, one per example of ``x`` (``n`` of them)."""
    model = getattr(program, "output_data_model", None)
    if y is None:
        raise DataError("`y` is required to compute rewards.")
    if model is not None:
        rows: list[Any] = to_targets(y, model, "y")
    else:
        rows = [r.model_dump(mode="json") if hasattr(r, "model_dump") else r for r in y]
    if len(rows) != n:
        raise DataError(f"`x` has {n} examples but `y` has {len(rows)}.")
    return rows


def fit_data(
    program: Program,
    x: Any,
    y: Any,
    validation_split: float,
    validation_data: Any,
) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """``(xs, ys, val_xs, val_ys)`` of a fit.

    ``validation_data`` wins over ``validation_split``; the split takes the *last* examples,
    before any shuffling, as Keras does.

    Raises:
        DataError: empty training data, empty validation data, or a split that leaves one of
            the two sets empty.
    """
    xs = read_x(program, x)
    ys = read_y(program, y, len(xs))
    if not xs:
        raise DataError("`x` is empty; fit() needs at least one example.")
    val_xs: list[Any] = []
    val_ys: list[Any] = []
    if validation_data is not None:
        if not isinstance(validation_data, tuple | list) or len(validation_data) != 2:
            raise DataError("`validation_data` must be a tuple (x_val, y_val).")
        val_xs = read_x(program, validation_data[0])
        val_ys = read_y(program, validation_data[1], len(val_xs))
        if not val_xs:
            raise DataError("`validation_data` is empty; pass examples or leave it out.")
    elif validation_split > 0:
        n_val = int(len(xs) * validation_split)
        if n_val == 0 or n_val == len(xs):
            raise DataError(
                f"validation_split={validation_split} of {len(xs)} examples leaves an empty "
                "training or validation set."
            )
        xs, val_xs = xs[:-n_val], xs[-n_val:]
        ys, val_ys = ys[:-n_val], ys[-n_val:]
    return xs, ys, val_xs, val_ys
