"""Rewards score one prediction against its ground truth, in [0, 1]."""

from __future__ import annotations

from typing import Any

from promptfit.data.data_model import DataModel

__all__ = ["Reward", "as_dict", "masked"]


def as_dict(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, DataModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return value
    raise TypeError(f"Expected a DataModel or dict, got {type(value).__name__}.")


def masked(
    value: dict[str, Any], in_mask: list[str] | None, out_mask: list[str] | None
) -> dict[str, Any]:
    """Keep only ``in_mask`` fields (if given), then drop ``out_mask`` fields."""
    if in_mask is not None:
        value = {k: v for k, v in value.items() if k in in_mask}
    if out_mask:
        value = {k: v for k, v in value.items() if k not in out_mask}
    return value


class Reward:
    """Base class: ``await reward(y_true, y_pred) -> float`` in [0, 1].

    ``y_pred`` is ``None`` when the program failed on the example; the trainer scores that 0
    without calling the reward. ``language_models`` lists the LMs the reward calls (for usage).
    """

    name = "reward"

    @property
    def language_models(self) -> list[Any]:
        return []

    async def call(self, y_true: dict[str, Any], y_pred: dict[str, Any]) -> float:
        raise NotImplementedError

    async def raw_score(self, y_true: Any, y_pred: Any) -> Any:
        """What :meth:`call` returns, unconverted (``fit`` checks it, naming the example)."""
        pred = as_dict(y_pred)
        if pred is None:
            return 0.0
        truth = as_dict(y_true)
        return await self.call(truth or {}, pred)

    async def __call__(self, y_true: Any, y_pred: Any) -> float:
        """The score as a float in [0, 1].

        Raises:
            RewardError: the reward returned something else (a string, ``None``, 5, ``inf``).
        """
        from promptfit.rewards.checking import check_value

        return check_value(await self.raw_score(y_true, y_pred), self, None)

    def get_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Reward:
        return cls(**config)
