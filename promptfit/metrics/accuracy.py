"""``Accuracy``: share of predictions equal to the ground truth on the compared fields."""

from __future__ import annotations

from typing import Any

from promptfit.metrics.metric import Metric
from promptfit.rewards.reward import as_dict, masked

__all__ = ["Accuracy"]


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
