"""Metrics: statistics accumulated over an epoch or an evaluation."""

from __future__ import annotations

from typing import Any

from promptfit.rewards.reward import as_dict, masked

__all__ = ["MeanReward", "Metric"]


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


class Accuracy(Metric):
    """Share of examples whose prediction equals the ground truth on the masked fields.

    Logged as ``accuracy``. A failed prediction counts as wrong.

    Args:
        in_mask: Fields compared (default: all fields of the ground truth).
        out_mask: Fields never compared.
        name: Log key.

    Example:
        ```python
        import promptfit as pf

        metric = pf.metrics.Accuracy(in_mask=["label"])
        metric.update_state({"label": "a"}, {"label": "a"}, 1.0)
        assert metric.result() == 1.0
        ```
    """

    def __init__(
        self,
        in_mask: list[str] | None = None,
        out_mask: list[str] | None = None,
        name: str = "accuracy",
    ) -> None:
        super().__init__(name)
        self.in_mask = in_mask
        self.out_mask = out_mask
        self.correct = 0
        self.count = 0

    def update_state(self, y_true: Any, y_pred: Any, reward: float) -> None:
        self.count += 1
        pred = as_dict(y_pred)
        if pred is None:
            return
        truth = masked(as_dict(y_true) or {}, self.in_mask, self.out_mask)
        if truth and all(pred.get(k) == v for k, v in truth.items()):
            self.correct += 1

    def result(self) -> float:
        return self.correct / self.count if self.count else 0.0

    def reset_state(self) -> None:
        self.correct, self.count = 0, 0

    def state_dict(self) -> dict[str, Any]:
        return {"correct": self.correct, "count": self.count}

    def get_config(self) -> dict[str, Any]:
        return {"in_mask": self.in_mask, "out_mask": self.out_mask, "name": self.name}
