"""The one helper every metric-watching callback uses to read and compare a monitored value.

Why one helper: ``EarlyStopping``, ``ProgramCheckpoint`` and friends must agree on what
"better" means, on how ``mode="auto"`` is inferred, and on what happens when the monitored key
is missing. Keeping that logic here means a run never stops early on one definition of
improvement while checkpointing on another, and a misspelt ``monitor`` is always reported
(a warning, or :class:`~promptfit.errors.MonitorKeyError` with ``strict=True``) instead of
silently doing nothing.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

from promptfit.errors import ConfigurationError, MonitorKeyError
from promptfit.metrics.direction import MAX_WORDS, MIN_WORDS, Direction, infer_mode

__all__ = ["MAX_WORDS", "MIN_WORDS", "MODES", "MetricWatcher", "infer_mode"]

MODES = ("auto", "min", "max")


def _check_number(name: str, value: Any, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{owner}: `{name}` must be a number, got {value!r}.")
    if math.isnan(value):
        raise ConfigurationError(f"{owner}: `{name}` must not be NaN.")
    return float(value)


class MetricWatcher:
    """Read one log key and decide whether a value improves on a reference.

    (Formerly ``MetricMonitor``: renamed so it is not confused with
    :class:`~promptfit.callbacks.Monitor`, the MLflow tracker; the old name still works and
    warns.)

    Args:
        monitor: The log key to watch, e.g. ``"val_reward"``.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (inferred from the key's name by
            :meth:`resolve`; see :func:`infer_mode`).
        min_delta: Smallest change that counts as an improvement (its absolute value is used,
            as in Keras).
        strict: Raise :class:`~promptfit.errors.MonitorKeyError` when the key is missing from
            the logs instead of warning once.
        owner: The callback's name, used in messages so users know who complained.

    Example:
        ```python
        from promptfit.callbacks._monitoring import MetricWatcher

        monitor = MetricWatcher("val_reward", min_delta=0.01)
        monitor.resolve()
        assert monitor.mode == "max"
        assert monitor.improved(0.8, 0.7)
        assert not monitor.improved(0.705, 0.7)
        ```
    """

    def __init__(
        self,
        monitor: str,
        mode: str = "auto",
        min_delta: float = 0.0,
        strict: bool = False,
        owner: str = "EarlyStopping",
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ConfigurationError(
                f"{owner}: `monitor` must be a non-empty log key such as 'val_reward', "
                f"got {monitor!r}."
            )
        if mode not in MODES:
            raise ConfigurationError(
                f"{owner}: `mode` must be one of {list(MODES)}, got {mode!r}. Use 'max' when "
                f"higher values of {monitor!r} are better and 'min' when lower values are."
            )
        self.monitor = monitor
        self.requested_mode = mode
        self.min_delta = abs(_check_number("min_delta", min_delta, owner))
        self.strict = bool(strict)
        self.owner = owner
        self._mode: Direction | None = None if mode == "auto" else mode  # type: ignore[assignment]
        self._warned = False

    # -- direction -----------------------------------------------------------------------------
    def resolve(self) -> Direction:
        """Fix the direction (inferring ``mode="auto"``) and re-arm the missing-key warning.

        Owning callbacks call this from ``on_train_begin`` so an unknown key fails before any
        LM request is paid for.

        Raises:
            ConfigurationError: ``mode="auto"`` and the key's name does not say which
                direction is better.
        """
        self._warned = False
        if self.requested_mode != "auto":
            return self.mode
        inferred = infer_mode(self.monitor)
        if inferred is None:
            raise ConfigurationError(
                f"{self.owner} cannot infer whether {self.monitor!r} should go up or down "
                "(mode='auto' recognises names containing "
                f"{', '.join(MAX_WORDS)} as 'max' and {', '.join(MIN_WORDS)} as 'min'). "
                f"Pass mode='max' if higher {self.monitor!r} is better, or mode='min'."
            )
        self._mode = inferred
        return inferred

    @property
    def mode(self) -> Direction:
        """``"min"`` or ``"max"`` (resolving ``"auto"`` on first use)."""
        if self._mode is None:
            return self.resolve()
        return self._mode

    # -- reading --------------------------------------------------------------------------------
    def missing_message(self, logs: Mapping[str, Any]) -> str:
        """The text used when the monitored key is not in ``logs``."""
        hint = ""
        if self.monitor.startswith("val_"):
            hint = (
                " Keys starting with 'val_' only exist at epoch end when fit() gets "
                "validation_data= or validation_split=."
            )
        return (
            f"{self.owner} monitors {self.monitor!r}, which is not in the logs. Available keys: "
            f"{sorted(logs)}. Pass one of them as `monitor=`.{hint}"
        )

    def get(self, logs: Mapping[str, Any] | None) -> float | None:
        """The monitored value as a float, or ``None`` when ``logs`` lack it.

        The first miss of a run warns (``UserWarning``) with the available keys; later misses
        are quiet so a per-batch caller does not flood the output. With ``strict=True`` every
        miss raises :class:`~promptfit.errors.MonitorKeyError` instead.
        """
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            message = self.missing_message(logs)
            if self.strict:
                raise MonitorKeyError(message)
            if not self._warned:
                self._warned = True
                warnings.warn(message, UserWarning, stacklevel=3)
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"{self.owner} monitors {self.monitor!r}, but its logged value {value!r} is not "
                "a number. Monitor a numeric log key."
            ) from None

    # -- comparing ------------------------------------------------------------------------------
    def improved(self, current: float, reference: float | None) -> bool:
        """Whether ``current`` beats ``reference`` by more than ``min_delta`` (Keras 3 rule).

        ``max``: ``current - min_delta > reference``; ``min``: ``current + min_delta <
        reference``. A ``None`` reference (nothing seen yet) is beaten by any real number;
        NaN never improves anything.
        """
        if math.isnan(current):
            return False
        if reference is None:
            return True
        if self.mode == "max":
            return current - self.min_delta > reference
        return current + self.min_delta < reference

    def reached(self, current: float, target: float) -> bool:
        """Whether ``current`` has reached ``target`` (``>=`` for max, ``<=`` for min)."""
        if math.isnan(current):
            return False
        return current >= target if self.mode == "max" else current <= target

    def initial_best(self) -> float:
        """The worst possible value: ``-inf`` for max, ``+inf`` for min."""
        return -math.inf if self.mode == "max" else math.inf

    def __repr__(self) -> str:
        return (
            f"MetricWatcher(monitor={self.monitor!r}, mode={self.requested_mode!r}, "
            f"min_delta={self.min_delta!r}, strict={self.strict!r})"
        )


def __getattr__(name: str) -> Any:
    if name == "MetricMonitor":  # renamed: "Monitor" is the MLflow tracker
        warnings.warn(
            "promptfit.callbacks._monitoring.MetricMonitor is deprecated; use MetricWatcher.",
            DeprecationWarning,
            stacklevel=2,
        )
        return MetricWatcher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
