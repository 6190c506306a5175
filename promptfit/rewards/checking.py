"""Score a batch with the compiled reward, checking every value it returns.

A reward is user code, and its output becomes the training signal: a reward returning 5, -3 or
``inf`` would silently distort every mean and every optimizer decision, and one returning
``None`` or a string (or raising) used to surface as a bare ``ExceptionGroup`` from the task
group. Here each value must be a real number in [0, 1] (``True``/``False`` count as 1/0; NaN
is scored 0, as before), otherwise :class:`~promptfit.errors.RewardError` names the reward, the
value and the example. A reward that *raises* is a ``RewardError`` too, unless the program was
compiled with ``reward_errors="record"``: then the example scores 0, the failure is counted in
:attr:`RewardChecker.failures` and logged once per reward.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

from promptfit.errors import LMConfigurationError, RewardError

__all__ = ["REWARD_ERROR_MODES", "RewardErrors", "check_reward_errors", "score_batch"]

logger = logging.getLogger("promptfit")

RewardErrors = Literal["raise", "record"]
REWARD_ERROR_MODES: tuple[str, ...] = ("raise", "record")

_warned: set[str] = set()


def check_reward_errors(mode: Any) -> RewardErrors:
    """Validate ``compile(reward_errors=...)``."""
    from promptfit.errors import ConfigurationError

    if mode not in REWARD_ERROR_MODES:
        raise ConfigurationError(
            f"`reward_errors` must be 'raise' (a reward that raises stops fit/evaluate with "
            f"RewardError) or 'record' (the example scores 0 and the failure is logged), got "
            f"{mode!r}."
        )
    return mode  # type: ignore[no-any-return]


def _reward_name(reward: Any) -> str:
    name = getattr(reward, "fn_name", None) or getattr(reward, "name", None)
    cls = type(reward).__name__
    return f"{cls}({name!r})" if name and name != "reward" else cls


def _example(x: Any) -> str:
    if x is None:
        return "(not given)"
    try:
        text = repr(x.model_dump(mode="json") if hasattr(x, "model_dump") else x)
    except Exception:
        text = object.__repr__(x)
    return text if len(text) <= 200 else text[:197] + "..."


def check_value(value: Any, reward: Any, x: Any) -> float:
    """``value`` as a float in [0, 1], or :class:`RewardError` naming what is wrong."""
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, int | float) and not (
        hasattr(value, "__float__") and hasattr(value, "dtype")  # numpy scalars
    ):
        raise RewardError(
            f"The reward {_reward_name(reward)} returned {value!r:.80} ({type(value).__name__}) "
            f"for the example {_example(x)}; a reward must return a number in [0, 1]."
        )
    number = float(value)
    if math.isnan(number):
        return 0.0
    if not 0.0 <= number <= 1.0:
        raise RewardError(
            f"The reward {_reward_name(reward)} returned {number!r} for the example "
            f"{_example(x)}; rewards must be in [0, 1] (scale or clip the score)."
        )
    return number


async def _score(reward: Any, y_true: Any, y_pred: Any, x: Any, mode: RewardErrors) -> float:
    try:
        value = await reward.raw_score(y_true, y_pred)
    except (RewardError, LMConfigurationError):
        raise
    except Exception as error:
        if mode == "record":
            name = _reward_name(reward)
            if name not in _warned:
                _warned.add(name)
                logger.warning(
                    "The reward %s raised %s: %s (example %s); such examples score 0 "
                    "(reward_errors='record'). Shown once per reward.",
                    name,
                    type(error).__name__,
                    str(error)[:200],
                    _example(x),
                )
            return 0.0
        raise RewardError(
            f"The reward {_reward_name(reward)} raised {type(error).__name__}: "
            f"{str(error)[:300]} for the example {_example(x)}. Fix the reward, or compile "
            "with reward_errors='record' to score such examples 0."
        ) from error
    return check_value(value, reward, x)


async def score_batch(
    reward: Any,
    xs: Sequence[Any],
    ys: Sequence[Any],
    predictions: Sequence[Any],
    mode: RewardErrors = "raise",
) -> list[float]:
    """The checked reward of every example (0 where the prediction failed).

    Rewards run concurrently (an LM judge waits on the network); the first error, in example
    order, is raised as itself, never wrapped in an ``ExceptionGroup``.
    """
    n = len(predictions)
    rewards = [0.0] * n
    errors: list[BaseException | None] = [None] * n

    async def one(i: int) -> None:
        if predictions[i] is None:
            return
        try:
            rewards[i] = await _score(reward, ys[i], predictions[i], xs[i], mode)
        except Exception as error:
            errors[i] = error

    if n == 1:
        await one(0)
    elif n:
        await asyncio.gather(*(one(i) for i in range(n)))
    for error in errors:
        if error is not None:
            raise error
    return rewards
