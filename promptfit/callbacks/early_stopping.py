"""``EarlyStopping``: stop ``fit`` when a monitored value stops improving or reaches a target."""

from __future__ import annotations

import copy
from typing import Any

from promptfit.callbacks._checks import check_int, check_optional_number, json_float
from promptfit.callbacks._monitoring import MetricWatcher
from promptfit.callbacks.callback import Callback

__all__ = ["EarlyStopping"]


class EarlyStopping(Callback):
    """Stop training when the monitored value has stopped improving.

    Every epoch costs LM calls, so running on after the reward has plateaued wastes money
    (and a prompt optimizer may start overfitting the training batches). The rules are those
    of ``keras.callbacks.EarlyStopping`` in Keras 3:

    * an epoch *improves* when ``current - min_delta > best`` (``mode="max"``) or
      ``current + min_delta < best`` (``"min"``); the first monitored epoch always improves;
    * ``wait`` counts the monitored epochs since the last improvement; it is reset only when
      the value also beats ``baseline`` (if given), so a run that never reaches the baseline
      stops after ``patience`` epochs;
    * training stops (``program.stop_training = True``) when ``wait >= patience`` on an epoch
      other than the first;
    * epochs before ``start_from_epoch`` are not monitored at all (warm-up).

    On top of Keras, ``stop_at`` ends the run as soon as the value reaches a target (``>=``
    for max, ``<=`` for min), e.g. stop once ``val_reward`` hits 1.0: there is nothing left
    to gain and every further epoch only costs.

    Args:
        monitor: The log key to watch.
        min_delta: Smallest change counted as an improvement (absolute value used).
        patience: Monitored epochs without improvement before stopping.
        verbose: 1 prints a line when stopping and when restoring variables.
        mode: ``"auto"`` (inferred from the key: reward/score/accuracy... are maximised,
            loss/cost/tokens/calls/latency... minimised), ``"min"`` or ``"max"``.
        baseline: Value the monitor must beat for the patience counter to reset.
        restore_best_variables: At the end of training, put back the program variables of the
            best epoch (otherwise the program keeps those of the last epoch).
        start_from_epoch: First epoch (0-based) to monitor.
        stop_at: Stop as soon as the monitored value reaches this target.
        strict: Raise :class:`~promptfit.errors.MonitorKeyError` when ``monitor`` is missing
            from the logs instead of warning once.

    Attributes:
        wait: Monitored epochs since the last improvement (reset as described above).
        best: Best value seen (``None`` before the first monitored epoch).
        best_epoch: Epoch (0-based) of ``best``.
        best_variables: Program variables at ``best_epoch`` (with ``restore_best_variables``).
        stopped_epoch: Epoch at which training was stopped (0 if it was not).

    Example:
        ```python
        import promptfit as pf

        stopper = pf.callbacks.EarlyStopping(
            monitor="val_reward", patience=2, min_delta=0.01, restore_best_variables=True
        )
        # await program.fit(x, y, validation_split=0.2, epochs=20, callbacks=[stopper])
        ```
    """

    def __init__(
        self,
        monitor: str = "val_reward",
        min_delta: float = 0,
        patience: int = 0,
        verbose: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_variables: bool = False,
        start_from_epoch: int = 0,
        stop_at: float | None = None,
        strict: bool = False,
    ) -> None:
        super().__init__()
        self._monitor = MetricWatcher(monitor, mode, min_delta, strict, owner="EarlyStopping")
        self.monitor = monitor
        self.mode = mode
        self.min_delta = self._monitor.min_delta
        self.patience = check_int("EarlyStopping", "patience", patience, minimum=0)
        # verbose=True is taken as 1 (as before); other non-integers are refused.
        verbose = int(verbose) if isinstance(verbose, bool) else verbose
        self.verbose = check_int("EarlyStopping", "verbose", verbose, minimum=0)
        self.baseline = check_optional_number("EarlyStopping", "baseline", baseline)
        self.restore_best_variables = bool(restore_best_variables)
        self.start_from_epoch = check_int(
            "EarlyStopping", "start_from_epoch", start_from_epoch, minimum=0
        )
        self.stop_at = check_optional_number("EarlyStopping", "stop_at", stop_at)
        self.strict = bool(strict)
        self.wait = 0
        self.stopped_epoch = 0
        self.best: float | None = None
        self.best_epoch = 0
        self.best_variables: dict[str, Any] | None = None
        self._restored = False

    # -- hooks --------------------------------------------------------------------------------
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # Fails here, before any LM call, when mode="auto" cannot be inferred.
        self._monitor.resolve()
        if self._restored:
            # load_state_dict() ran before this hook (BackupAndRestore listed earlier): keep
            # the restored progress instead of wiping it as a fresh run would.
            self._restored = False
            return
        # Allow instances to be re-used across fit() calls, as in Keras.
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_epoch = 0
        self.best_variables = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        current = self._monitor.get(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_variables and self.best_variables is None:
            # Never improved yet: the current variables are the best known.
            self.best_variables = self.program.get_variables()
            self.best_epoch = epoch

        self.wait += 1
        improved = self._monitor.improved(current, self.best)
        if improved:
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_variables:
                self.best_variables = self.program.get_variables()
            # Only restart waiting if the value beats both the previous best and the baseline.
            if self.baseline is None or self._monitor.improved(current, self.baseline):
                self.wait = 0

        if self.stop_at is not None and self._monitor.reached(current, self.stop_at):
            self._stop(epoch)
            if self.verbose > 0:
                print(
                    f"Epoch {epoch + 1}: {self.monitor} reached the target {self.stop_at} "
                    f"({current:.5g}); stopping.",
                    flush=True,
                )
            return
        if improved:
            return
        if self.wait >= self.patience and epoch > 0:
            self._stop(epoch)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        # A restore that landed after on_train_begin must not leak into the next fit().
        self._restored = False
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping", flush=True)
        if self.restore_best_variables and self.best_variables is not None:
            if self.verbose > 0:
                print(
                    "Restoring program variables from the end of the best epoch: "
                    f"{self.best_epoch + 1}.",
                    flush=True,
                )
            self.program.set_variables(self.best_variables)

    # -- helpers -------------------------------------------------------------------------------
    def _stop(self, epoch: int) -> None:
        self.stopped_epoch = epoch
        self.program.stop_training = True

    def get_monitor_value(self, logs: dict[str, Any] | None) -> float | None:
        """The monitored value in ``logs`` (warns once, or raises with ``strict``, if absent)."""
        return self._monitor.get(logs)

    # -- state and config -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "wait": self.wait,
            "best": json_float(self.best),
            "best_epoch": self.best_epoch,
            "stopped_epoch": self.stopped_epoch,
            "best_variables": copy.deepcopy(self.best_variables),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wait = int(state["wait"])
        best = state.get("best")
        self.best = None if best is None else float(best)
        self.best_epoch = int(state["best_epoch"])
        self.stopped_epoch = int(state["stopped_epoch"])
        variables = state.get("best_variables")
        self.best_variables = copy.deepcopy(variables) if variables is not None else None
        self._restored = True

    def get_config(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "min_delta": self.min_delta,
            "patience": self.patience,
            "verbose": self.verbose,
            "mode": self.mode,
            "baseline": self.baseline,
            "restore_best_variables": self.restore_best_variables,
            "start_from_epoch": self.start_from_epoch,
            "stop_at": self.stop_at,
            "strict": self.strict,
        }
