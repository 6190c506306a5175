"""Metrics: statistics accumulated over an epoch or an evaluation."""

from __future__ import annotations

from typing import Any

__all__ = ["Metric"]


class Metric:
    """Base class of stateful metrics.

    ``update_state`` is called once per example with the ground truth, the prediction (``None``
    when the program failed) and the example's reward. ``result`` is logged under ``name``.
    ``state_dict``/``load_state_dict`` let a backup resume a half-finished epoch.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def update_state(self, y_true: Any, y_pred: Any, reward: float) -> None:
        raise NotImplementedError

    def result(self) -> float:
        raise NotImplementedError

    def reset_state(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Metric:
        return cls(**config)
