"""``FunctionReward``: any sync or async function as a reward."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from promptfit.errors import ConfigurationError
from promptfit.rewards.reward import Reward

__all__ = ["FunctionReward"]


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
