"""Which way a logged value should go: ``"max"`` for rewards and scores, ``"min"`` for costs.

Why here, in ``metrics/``: the rule is about what a log key *means*, and it has two readers in
different layers: the metric-watching callbacks (``mode="auto"``) and the checkpoint manifest
(``best_checkpoint(monitor=...)`` on a directory written without a mode). Keeping it below both
means neither imports the other.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["MAX_WORDS", "MIN_WORDS", "Direction", "infer_mode"]

#: Substrings of a log key (after stripping ``val_``) meaning "higher is better".
MAX_WORDS = ("reward", "score", "accuracy", "acc", "f1", "precision", "recall", "auc")
#: Substrings of a log key (after stripping ``val_``) meaning "lower is better".
MIN_WORDS = ("loss", "cost", "tokens", "calls", "latency", "failed", "error")

Direction = Literal["min", "max"]


def infer_mode(monitor: str) -> Direction | None:
    """The direction implied by a log key's name, or ``None`` when the name does not tell.

    A ``val_`` prefix is ignored. A name matching words of both lists (``"recalls"`` contains
    both ``recall`` and ``calls``) is ambiguous and gives ``None`` too: guessing the direction
    of a stopping or checkpointing rule is worse than asking for it.

    Example:
        ```python
        from promptfit.metrics.direction import infer_mode

        assert infer_mode("val_reward") == "max"
        assert infer_mode("failed_calls") == "min"
        assert infer_mode("exact_match") is None
        ```
    """
    name = monitor.lower().removeprefix("val_")
    is_max = any(word in name for word in MAX_WORDS)
    is_min = any(word in name for word in MIN_WORDS)
    if is_max == is_min:
        return None
    return "max" if is_max else "min"
