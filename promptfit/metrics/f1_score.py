"""``F1Score``: classification F1 over the label in one or more fields."""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from promptfit.errors import ConfigurationError
from promptfit.metrics.metric import Metric
from promptfit.rewards.reward import as_dict, masked

__all__ = ["F1Score"]

_MISSING = "<failed>"


class F1Score(Metric):
    """F1 score of a classification, where the class is the value of the masked fields.

    Args:
        average: ``"macro"`` (mean of per-class F1 over classes seen in the ground truth or the
            predictions), ``"micro"`` (global counts; equals accuracy for single-label tasks)
            or ``"binary"`` (F1 of ``pos_label`` only).
        in_mask: Fields that make up the label (e.g. ``["label"]``).
        out_mask: Fields never used.
        pos_label: The positive class for ``average="binary"``.
        name: Log key; defaults to ``f1_score`` (``f1_<average>`` is *not* used, so the key is
            predictable).

    A failed prediction counts as a wrong prediction of a class of its own.

    Example:
        ```python
        import promptfit as pf

        f1 = pf.metrics.F1Score(average="macro", in_mask=["label"])
        f1.update_state({"label": "pos"}, {"label": "pos"}, 1.0)
        f1.update_state({"label": "neg"}, {"label": "pos"}, 0.0)
        round(f1.result(), 3)
        ```
    """

    def __init__(
        self,
        average: Literal["macro", "micro", "binary"] = "macro",
        in_mask: list[str] | None = None,
        out_mask: list[str] | None = None,
        pos_label: Any = None,
        name: str = "f1_score",
    ) -> None:
        if average not in ("macro", "micro", "binary"):
            raise ConfigurationError(
                f"F1Score `average` must be 'macro', 'micro' or 'binary', got {average!r}."
            )
        if average == "binary" and pos_label is None:
            raise ConfigurationError("F1Score(average='binary') needs `pos_label`.")
        super().__init__(name)
        self.average = average
        self.in_mask = in_mask
        self.out_mask = out_mask
        self.pos_label = pos_label
        self.tp: Counter[str] = Counter()
        self.fp: Counter[str] = Counter()
        self.fn: Counter[str] = Counter()

    def _label(self, value: dict[str, Any]) -> str:
        fields = masked(value, self.in_mask, self.out_mask)
        if len(fields) == 1:
            return str(next(iter(fields.values())))
        return repr(sorted(fields.items()))

    def update_state(self, y_true: Any, y_pred: Any, reward: float) -> None:
        truth = self._label(as_dict(y_true) or {})
        pred_dict = as_dict(y_pred)
        pred = _MISSING if pred_dict is None else self._label(pred_dict)
        if pred == truth:
            self.tp[truth] += 1
        else:
            self.fn[truth] += 1
            self.fp[pred] += 1

    @staticmethod
    def _f1(tp: int, fp: int, fn: int) -> float:
        denominator = 2 * tp + fp + fn
        return 2 * tp / denominator if denominator else 0.0

    def result(self) -> float:
        if self.average == "micro":
            return self._f1(sum(self.tp.values()), sum(self.fp.values()), sum(self.fn.values()))
        if self.average == "binary":
            label = str(self.pos_label)
            return self._f1(self.tp[label], self.fp[label], self.fn[label])
        classes = (set(self.tp) | set(self.fn) | set(self.fp)) - {_MISSING}
        if not classes:
            return 0.0
        return sum(self._f1(self.tp[c], self.fp[c], self.fn[c]) for c in classes) / len(classes)

    def reset_state(self) -> None:
        self.tp, self.fp, self.fn = Counter(), Counter(), Counter()

    def state_dict(self) -> dict[str, Any]:
        return {"tp": dict(self.tp), "fp": dict(self.fp), "fn": dict(self.fn)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        counters = []
        for key in ("tp", "fp", "fn"):
            counts = state.get(key) if isinstance(state, dict) else None
            if not isinstance(counts, dict) or not all(
                isinstance(k, str) and type(v) is int and v >= 0 for k, v in counts.items()
            ):
                raise ValueError(
                    f"metric {self.name!r}: state {key!r} must map labels to non-negative "
                    f"integers, got {counts!r:.60}"
                )
            counters.append(Counter(counts))
        self.tp, self.fp, self.fn = counters

    def get_config(self) -> dict[str, Any]:
        return {
            "average": self.average,
            "in_mask": self.in_mask,
            "out_mask": self.out_mask,
            "pos_label": self.pos_label,
            "name": self.name,
        }
