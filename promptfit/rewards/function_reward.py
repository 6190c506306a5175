"""``FunctionReward``: any sync or async function as a reward."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from promptfit.errors import ConfigurationError
from promptfit.rewards.reward import Reward

__all__ = ["FunctionReward", "get_reward"]


class FunctionReward(Reward):
    """Wrap any sync or async function ``fn(y_true: dict, y_pred: dict) -> float``.

    Args:
        fn: The scoring function; it receives plain dicts.
        name: Name used in logs and saved configs.

    Example:
        ```python
        import promptfit as pf

        def contains(y_true, y_pred):
            return float(y_true["answer"] in y_pred["answer"])

        reward = pf.rewards.FunctionReward(contains)
        ```
    """

    def __init__(
        self, fn: Callable[[dict[str, Any], dict[str, Any]], Any], name: str | None = None
    ):
        if not callable(fn):
            raise ConfigurationError(f"FunctionReward needs a callable, got {fn!r}.")
        self.fn = fn
        self.fn_name = name or getattr(fn, "__name__", "function_reward")

    async def call(self, y_true: dict[str, Any], y_pred: dict[str, Any]) -> Any:
        # Returned as is: converting here would turn "0.5" into a score and None into a bare
        # TypeError; the caller checks the value and names the example (RewardError).
        result = self.fn(y_true, y_pred)
        if inspect.isawaitable(result):
            result = await result
        return result

    def get_config(self) -> dict[str, Any]:
        from promptfit.saving.registry import registered_name

        return {"fn": registered_name(self.fn) or self.fn_name, "name": self.fn_name}


def get_reward(reward: Any) -> Reward:
    """Accept a Reward instance or a plain function (wrapped in a :class:`FunctionReward`).

    It lives beside FunctionReward, not beside Reward, so ``reward.py`` never imports its own
    subclass back.
    """
    if isinstance(reward, Reward):
        return reward
    if callable(reward):
        return FunctionReward(reward)
    raise ConfigurationError(
        f"`reward` must be a pf.rewards.Reward or a function (y_true, y_pred) -> float, "
        f"got {reward!r}."
    )
