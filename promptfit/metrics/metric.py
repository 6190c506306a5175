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
        """Restore accumulators saved by :meth:`state_dict` (from a backup: checked first).

        Only the keys the metric has now are accepted, each with a value of the same kind
        (finite, non-negative numbers for counts); configuration (``name``, masks...) is never
        changed by a state, so a backup cannot rename a metric or change what it compares.

        Raises:
            ValueError: an unknown key, a changed configuration value or a value of the
                wrong kind (``BackupAndRestore`` reports it with the file to delete).
        """
        if not isinstance(state, dict):
            raise ValueError(f"the state of metric {self.name!r} must be an object")
        current = self.state_dict()
        config = self.get_config()
        unknown = sorted(set(state) - set(current))
        if unknown:
            raise ValueError(f"metric {self.name!r} has no state {unknown}")
        updates: dict[str, Any] = {}
        for key, value in state.items():
            if key in config or key == "name":
                if value != current[key]:
                    raise ValueError(f"the state of metric {self.name!r} changes its {key!r}")
                continue
            _check_state_value(self.name, key, current[key], value)
            updates[key] = value
        for key, value in updates.items():
            setattr(self, key, value)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Metric:
        return cls(**config)


def _check_state_value(metric: str, key: str, current: Any, value: Any) -> None:
    """``value`` must be the same JSON kind as ``current``; numbers finite and >= 0."""
    import math

    if isinstance(current, bool) or isinstance(value, bool):
        ok = isinstance(current, bool) == isinstance(value, bool)
    elif isinstance(current, int | float):
        ok = isinstance(value, int | float) and math.isfinite(value) and value >= 0
    elif current is None or isinstance(current, str):
        ok = value is None or isinstance(value, str)
    elif isinstance(current, list | dict):
        ok = isinstance(value, type(current))
    else:
        ok = True
    if not ok:
        raise ValueError(f"metric {metric!r}: state {key!r} = {value!r:.60} is not valid")
