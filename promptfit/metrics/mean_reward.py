"""``MeanReward``: the mean reward as a metric of its own."""

from __future__ import annotations

from typing import Any

from promptfit.metrics.metric import Metric

__all__ = ["MeanReward"]


class MeanReward(Metric):
    """The mean reward, logged as ``mean_reward`` by default (the trainer logs ``reward`` itself).

    Example:
        ```python
        import promptfit as pf

        metric = pf.metrics.MeanReward()
        metric.update_state({}, {}, 1.0)
        assert metric.result() == 1.0
        ```
    """

    def __init__(self, name: str = "mean_reward") -> None:
        super().__init__(name)
        self.total = 0.0
        self.count = 0

    def update_state(self, y_true: Any, y_pred: Any, reward: float) -> None:
        self.total += reward
        self.count += 1

    def result(self) -> float:
        return self.total / self.count if self.count else 0.0

    def reset_state(self) -> None:
        self.total, self.count = 0.0, 0
