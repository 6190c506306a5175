"""Constructor-argument checks shared by the callbacks.

Why one module: every callback checks a few integers and numbers the same way (``True`` is an
``int`` to Python, ``float("nan")`` passes every comparison, a string passes nothing but fails
with a bare ``TypeError``), and each used to carry its own copy with its own wording. Here the
check and the message ("``Owner: `name` must be ..., got ...``", naming the callback, the
argument, what it takes and what it got) are written once.
"""

from __future__ import annotations

import math
from typing import Any

from promptfit.errors import ConfigurationError

__all__ = [
    "check_int",
    "check_number",
    "check_optional_int",
    "check_optional_number",
    "check_save_freq",
    "json_float",
]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int_kind(minimum: int | None) -> str:
    if minimum == 1:
        return "a positive integer"
    return "an integer" if minimum is None else f"an integer >= {minimum}"


def check_int(owner: str, name: str, value: Any, *, minimum: int | None = None) -> int:
    """``value`` as an ``int`` (never a bool, float or string), at least ``minimum``.

    Raises:
        ConfigurationError: naming ``owner``, the argument and the value.
    """
    if not _is_int(value) or (minimum is not None and value < minimum):
        raise ConfigurationError(
            f"{owner}: `{name}` must be {_int_kind(minimum)}, got {value!r:.60}."
        )
    return int(value)


def check_optional_int(
    owner: str, name: str, value: Any, *, minimum: int | None = None
) -> int | None:
    """``None``, or what :func:`check_int` accepts."""
    if value is None:
        return None
    if not _is_int(value) or (minimum is not None and value < minimum):
        raise ConfigurationError(
            f"{owner}: `{name}` must be {_int_kind(minimum)} or None, got {value!r:.60}."
        )
    return int(value)


def _number_kind(above: float | None, maximum: float | None) -> str:
    if above == 0 and maximum is None:
        return "a positive number"
    if above is not None and maximum is not None:
        return f"a number in ({above:g}, {maximum:g}]"
    if above is not None:
        return f"a number > {above:g}"
    if maximum is not None:
        return f"a number <= {maximum:g}"
    return "a finite number"


def check_number(
    owner: str,
    name: str,
    value: Any,
    *,
    above: float | None = None,
    maximum: float | None = None,
) -> float:
    """``value`` as a finite ``float`` (not a bool, string or NaN), ``above < value <= maximum``.

    Raises:
        ConfigurationError: naming ``owner``, the argument and the value.
    """
    if (
        not _is_number(value)
        or not math.isfinite(value)
        or (above is not None and not value > above)
        or (maximum is not None and not value <= maximum)
    ):
        raise ConfigurationError(
            f"{owner}: `{name}` must be {_number_kind(above, maximum)}, got {value!r:.60}."
        )
    return float(value)


def check_optional_number(
    owner: str,
    name: str,
    value: Any,
    *,
    above: float | None = None,
    maximum: float | None = None,
) -> float | None:
    """``None``, or what :func:`check_number` accepts."""
    if value is None:
        return None
    try:
        return check_number(owner, name, value, above=above, maximum=maximum)
    except ConfigurationError:
        raise ConfigurationError(
            f"{owner}: `{name}` must be {_number_kind(above, maximum)} or None, got {value!r:.60}."
        ) from None


def check_save_freq(owner: str, save_freq: Any) -> str | int:
    """``"epoch"`` or a positive number of batches (what every saving callback takes)."""
    if save_freq == "epoch" and isinstance(save_freq, str):
        return save_freq
    if not _is_int(save_freq) or save_freq < 1:
        raise ConfigurationError(
            f"{owner}: `save_freq` must be 'epoch' or a positive number of batches, "
            f"got {save_freq!r:.60}."
        )
    return int(save_freq)


def json_float(value: float | None) -> float | None:
    """``value`` for a JSON state: ``None`` for ``None``, NaN and infinities (strict JSON has
    none of them, and a restored ``best`` of NaN would never be improved on)."""
    return value if value is not None and math.isfinite(value) else None
