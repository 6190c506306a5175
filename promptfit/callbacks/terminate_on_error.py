"""``TerminateOnError``: stop training when the language models keep failing."""

from __future__ import annotations

from typing import Any

from promptfit.callbacks._checks import check_optional_int, check_optional_number
from promptfit.callbacks.callback import Callback
from promptfit.training.context import FitContext

__all__ = ["TerminateOnError"]


class TerminateOnError(Callback):
    """Stop training when LM calls fail too much: promptfit's ``TerminateOnNaN``.

    A failed LM call does not crash ``fit``: the example's prediction becomes ``None`` and
    scores 0. That keeps one flaky request from killing a long run, but when the provider is
    down, the quota is spent or the model cannot produce the output schema, every batch then
    "trains" on zeros while still paying for retries. This callback ends such a run.

    Two independent thresholds (either may be set; with neither, the default is
    ``max_failure_rate=1.0``: stop when *every* prediction of a training batch failed):

    * ``max_failed_calls``: checked after every training batch and at epoch end against
      ``logs["failed_calls"]``, the LM calls that failed after all retries so far in the
      epoch (at epoch end including validation; any LM of the run counts: program, reward
      judge, optimizer). Training stops once that count reaches the threshold.
    * ``max_failure_rate``: checked after every training batch, as the share of the batch's
      predictions that failed (``None``). Training stops once it reaches the threshold. The
      rate is per prediction, not ``failed_calls / lm_calls``: ``lm_calls`` counts provider
      replies, retried ones included, and does not count requests that ended in an HTTP
      error, so that ratio is not a share (it is unbounded when requests error out, and only
      ``1 / (1 + max_retries)`` when every reply was malformed).

    Stopping sets ``program.stop_training = True``: the current batch is the last, validation
    and ``on_epoch_end`` still run. The reason is printed and kept in :attr:`stopped_reason`.

    Args:
        max_failed_calls: Failed LM calls in an epoch that stop training (>= 1).
        max_failure_rate: Share of a batch's predictions that failed which stops training,
            in (0, 1].

    Raises:
        ConfigurationError: a threshold is out of range.

    Example:
        ```python
        import promptfit as pf

        # Stop on a dead provider (all predictions of a batch failed), the default:
        stop_dead = pf.callbacks.TerminateOnError()
        # Stop when half a batch fails, or after 20 failed calls in an epoch:
        strict = pf.callbacks.TerminateOnError(max_failed_calls=20, max_failure_rate=0.5)
        ```
    """

    def __init__(
        self, max_failed_calls: int | None = None, max_failure_rate: float | None = None
    ) -> None:
        super().__init__()
        self.max_failed_calls = check_optional_int(
            "TerminateOnError", "max_failed_calls", max_failed_calls, minimum=1
        )
        self.max_failure_rate = check_optional_number(
            "TerminateOnError", "max_failure_rate", max_failure_rate, above=0.0, maximum=1.0
        )
        if self.max_failed_calls is None and self.max_failure_rate is None:
            self.max_failure_rate = 1.0
        self.stopped_reason: str | None = None
        self._epoch = 0  # from the hooks' arguments, for loops that set no FitContext

    @property
    def _current_epoch(self) -> int:
        """The fit's epoch (right on a resumed epoch too), else the last hook's argument."""
        context = self.context
        return context.epoch if isinstance(context, FitContext) else self._epoch

    def _stop(self, reason: str) -> None:
        self.stopped_reason = reason
        self.program.stop_training = True
        print(f"TerminateOnError: {reason}; terminating training.", flush=True)

    def _check_count(self, logs: dict[str, Any] | None, where: str) -> bool:
        if self.max_failed_calls is None:
            return False
        failed = int((logs or {}).get("failed_calls", 0) or 0)
        if failed >= self.max_failed_calls:
            self._stop(
                f"{failed} failed LM calls in epoch {self._current_epoch} ({where}) reached "
                f"max_failed_calls={self.max_failed_calls}"
            )
            return True
        return False

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.stopped_reason = None
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.stopped_reason is not None:
            return
        if self._check_count(logs, f"after batch {batch}"):
            return
        outcome = self.context.last_batch if self.context is not None else None
        if self.max_failure_rate is None or outcome is None or not outcome.predictions:
            return
        examples = len(outcome.predictions)
        failed = outcome.failed_predictions
        rate = failed / examples
        if rate >= self.max_failure_rate:
            self._stop(
                f"{failed} of {examples} predictions failed in epoch {self._current_epoch}, batch "
                f"{batch} (rate {rate:.2f} reached max_failure_rate={self.max_failure_rate:g})"
            )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch
        if self.stopped_reason is None:
            self._check_count(logs, "at epoch end")

    def get_config(self) -> dict[str, Any]:
        return {
            "max_failed_calls": self.max_failed_calls,
            "max_failure_rate": self.max_failure_rate,
        }
