"""Turn user data (DataModels, dicts, DataFrames) into validated DataModel instances.

``x`` and ``y`` may be lists of DataModel instances, lists of dicts, or pandas DataFrames whose
columns are the model's fields. Everything is validated up front, so a typo in a column name
fails before any LM money is spent, with the row and field that is wrong.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pydantic

from promptfit.data.data_model import DataModel
from promptfit.errors import DataError

__all__ = ["to_data_model", "to_data_models", "to_targets"]


def _is_dataframe(data: Any) -> bool:
    # pandas is imported only by a caller that has a DataFrame (it would cost a large part of
    # ``import promptfit``): if pandas is not loaded, ``data`` cannot be one.
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(data, pd.DataFrame)


def _rows(data: Any, what: str) -> list[Any]:
    if _is_dataframe(data):
        return [
            {k: (None if _is_missing(v) else v) for k, v in row.items()}
            for row in data.to_dict(orient="records")
        ]
    if isinstance(data, DataModel | dict):
        raise DataError(
            f"`{what}` must be a list of examples, got a single {type(data).__name__}; "
            f"wrap it in a list."
        )
    if isinstance(data, Sequence) and not isinstance(data, str | bytes):
        return list(data)
    raise DataError(
        f"`{what}` must be a list of DataModel instances, a list of dicts or a pandas DataFrame, "
        f"got {type(data).__name__}."
    )


def _is_missing(value: Any) -> bool:
    import pandas as pd  # only reached for DataFrame rows: pandas is loaded

    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _validated(
    data: Any,
    data_model: type[DataModel],
    what: str,
    validate: Callable[[Any], Any],
    dump: Callable[[pydantic.BaseModel], Any],
) -> list[Any]:
    """Run ``validate`` on every row, turning a failure into a DataError naming row and fields."""
    return [
        _validated_row(row, data_model, f"`{what}[{index}]`", validate, dump)
        for index, row in enumerate(_rows(data, what))
    ]


def _validated_row(
    row: Any,
    data_model: type[DataModel],
    label: str,
    validate: Callable[[Any], Any],
    dump: Callable[[pydantic.BaseModel], Any],
) -> Any:
    if isinstance(row, pydantic.BaseModel) and not isinstance(row, data_model):
        row = dump(row)
    if not isinstance(row, dict | data_model):
        raise DataError(
            f"{label} is a {type(row).__name__}; expected a dict or {data_model.__name__}."
        )
    check_text(row if isinstance(row, dict) else row.__dict__, label)
    try:
        return validate(row)
    except DataError as exc:
        raise DataError(f"{label} {exc}.") from None
    except pydantic.ValidationError as exc:
        fields = sorted(data_model.model_fields)
        raise DataError(
            f"{label} does not match {data_model.__name__} (fields: {fields}): "
            f"{exc.errors(include_url=False)}"
        ) from exc


def _as_instance(data_model: type[DataModel]) -> Callable[[Any], DataModel]:
    def validate(row: Any) -> DataModel:
        if isinstance(row, data_model):
            return row
        model = data_model.model_validate(row)  # missing or invalid fields are reported first
        unknown = sorted(str(k) for k in set(row) - _field_names(data_model))
        if unknown:
            # A typo would otherwise be dropped in silence and the field left at its default.
            raise DataError(
                f"has unknown fields {unknown}; {data_model.__name__} has "
                f"{sorted(data_model.model_fields)} (check the spelling)"
            )
        return model

    return validate


def _field_names(data_model: type[pydantic.BaseModel]) -> set[str]:
    names = set(data_model.model_fields)
    for name, info in data_model.model_fields.items():
        for alias in (info.alias, info.validation_alias):
            if isinstance(alias, str):
                names.add(alias)
        del name
    return names


def check_text(value: Any, label: str) -> None:
    """Refuse strings that cannot be written as UTF-8 (lone surrogates such as ``"\ud800"``).

    They would fail later, in the data fingerprint, a prompt or a log file, with a bare
    ``UnicodeEncodeError``.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as error:
                raise DataError(
                    f"{label} holds text that is not valid Unicode ({error.reason} at "
                    f"{item[max(0, error.start - 10) : error.end + 10]!r}); remove or replace "
                    "the lone surrogate characters."
                ) from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def to_data_models(data: Any, data_model: type[DataModel], what: str = "x") -> list[DataModel]:
    """Validate ``data`` against ``data_model`` and return one instance per row."""
    return _validated(
        data, data_model, what, _as_instance(data_model), lambda model: model.model_dump()
    )


def to_data_model(value: Any, data_model: type[DataModel], what: str) -> DataModel:
    """Validate one value (a dict, or a model with the same fields) against ``data_model``.

    What lets a program or a generator be called with a plain dict, like ``evaluate``."""
    return _validated_row(
        value, data_model, f"`{what}`", _as_instance(data_model), lambda m: m.model_dump()
    )


@functools.lru_cache(maxsize=256)
def _target_model(data_model: type[pydantic.BaseModel]) -> type[pydantic.BaseModel]:
    """``data_model`` with every field optional and unknown fields forbidden."""
    fields: dict[str, Any] = {
        name: (info.annotation | None, None) for name, info in data_model.model_fields.items()
    }
    return pydantic.create_model(
        f"{data_model.__name__}Target",
        __config__=pydantic.ConfigDict(extra="forbid"),
        **fields,
    )


def to_targets(data: Any, data_model: type[DataModel], what: str = "y") -> list[dict[str, Any]]:
    """Validate ground truths: each row may give a subset of ``data_model``'s fields.

    Targets rarely cover every output field (a ChainOfThought adds ``thinking``; a label set
    has no rationale), so missing fields are allowed, but an unknown field is a typo and
    fails. Rows come back as JSON-ready dicts holding only the fields given.
    """
    target = _target_model(data_model)

    def validate(row: Any) -> dict[str, Any]:
        given = target.model_validate(
            row.model_dump(mode="json", exclude_unset=True) if isinstance(row, data_model) else row
        ).model_dump(mode="json", exclude_unset=True)
        if not given:
            raise DataError(
                f"gives no field; a target needs at least one of {sorted(data_model.model_fields)}"
            )
        return given

    return _validated(
        data,
        data_model,
        what,
        validate,
        lambda model: model.model_dump(mode="json", exclude_unset=True),
    )
