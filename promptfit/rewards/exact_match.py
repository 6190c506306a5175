"""``ExactMatch``: 1.0 when the prediction equals the ground truth on the compared fields."""

from __future__ import annotations

from typing import Any

from promptfit.rewards.reward import Reward, masked

__all__ = ["ExactMatch"]


class ExactMatch(Reward):
    """1.0 when every compared field of the prediction equals the ground truth, else 0.0.

    The compared fields are the ground truth's fields, narrowed by ``in_mask`` (keep only
    these) and ``out_mask`` (drop these). Extra fields in the prediction (``thinking`` from
    ChainOfThought, say) are ignored.

    Args:
        in_mask: Fields to compare.
        out_mask: Fields never compared.
        normalize: Compare strings case-insensitively with surrounding space stripped.

    Example:
        ```python
        import promptfit as pf

        reward = pf.rewards.ExactMatch(in_mask=["answer"])
        ```
    """

    def __init__(
        self,
        in_mask: list[str] | None = None,
        out_mask: list[str] | None = None,
        normalize: bool = False,
    ) -> None:
        self.in_mask = list(in_mask) if in_mask is not None else None
        self.out_mask = list(out_mask) if out_mask is not None else None
        self.normalize = normalize

    def _norm(self, value: Any) -> Any:
        if self.normalize and isinstance(value, str):
            return value.strip().lower()
        return value

    async def call(self, y_true: dict[str, Any], y_pred: dict[str, Any]) -> float:
        truth = masked(y_true, self.in_mask, self.out_mask)
        if not truth:
            return 0.0
        for key, expected in truth.items():
            if key not in y_pred or self._norm(y_pred[key]) != self._norm(expected):
                return 0.0
        return 1.0

    def get_config(self) -> dict[str, Any]:
        return {"in_mask": self.in_mask, "out_mask": self.out_mask, "normalize": self.normalize}
