"""``BudgetStopping``: stop training once the run has spent a cost, token or call budget."""

from __future__ import annotations

from typing import Any

from promptfit.callbacks._checks import check_optional_int, check_optional_number
from promptfit.callbacks.callback import Callback
from promptfit.errors import ConfigurationError
from promptfit.training.context import FitContext

__all__ = ["BudgetStopping"]

# Limit name -> the usage counter it watches, in the order limits are checked.
_LIMITS = (("max_cost", "cost"), ("max_tokens", "tokens"), ("max_calls", "calls"))


class BudgetStopping(Callback):
    """Stop training when the run's language models have used up a budget.

    LLM training costs money at every step, so a run should be able to say "stop at $5" the
    way Keras' ``EarlyStopping`` says "stop when the loss stalls". After every training batch
    and every epoch, the callback compares what the run has consumed -- usage of every LM of
    the program, the reward and the optimizer (``program.usage_totals()``) since
    ``on_train_begin`` -- with the limits. When one is reached it sets
    ``program.stop_training = True``: the current batch finishes, validation and
    ``on_epoch_end`` still run (so checkpoints and logs see the last epoch), and no further
    batch starts. Which limit tripped is kept in :attr:`stopped_reason`.

    Consumption is counted on the LM usage counters, so it includes optimizer candidates,
    LM-judged rewards, validation and any LM call a callback makes. ``calls`` counts requests
    answered by the provider (retries of malformed replies included, cache hits excluded).
    A budget stops the run *after* the batch that crossed it, so the final spend can exceed a
    limit by up to one batch (or one validation pass).

    Resuming: :meth:`state_dict` saves what was consumed. On restore (``BackupAndRestore``
    restores the fit's progress, which first puts every LM's usage counters back to their values at
    backup time, then this callback's state), counting continues from the consumed amount at
    backup time. Calls made between that backup and a crash were rolled back along with the
    counters and are *not* counted: after a crash the provider's bill can exceed what this
    callback reports by up to one backup interval of spending. Pick a backup frequency that
    bounds that gap if the budget is strict.

    Args:
        max_cost: Most cost in the provider's currency (USD for litellm's price table).
        max_tokens: Most prompt plus completion tokens.
        max_calls: Most LM requests.
        verbose: 1 prints a line when the budget stops training; 0 is silent.

    Attributes:
        stopped_reason: ``"max_cost"``, ``"max_tokens"``, ``"max_calls"`` or ``None`` when no
            limit was reached.
        stopped_epoch: The epoch in which training was stopped, or ``None``.
        consumed: ``{"cost", "tokens", "calls"}`` consumed so far by this run.

    Raises:
        ConfigurationError: no limit is given, or a limit is not a positive number.

    Example:
        ```python
        import promptfit as pf

        budget = pf.callbacks.BudgetStopping(max_cost=2.50, max_calls=1_000, verbose=1)
        # await program.fit(x, y, epochs=10, callbacks=[budget])
        # budget.stopped_reason -> "max_cost" if the run was cut short by cost
        ```
    """

    def __init__(
        self,
        max_cost: float | None = None,
        max_tokens: int | None = None,
        max_calls: int | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__()
        if max_cost is None and max_tokens is None and max_calls is None:
            raise ConfigurationError(
                "BudgetStopping needs at least one limit: pass max_cost=, max_tokens= "
                "or max_calls=."
            )
        self.max_cost = check_optional_number("BudgetStopping", "max_cost", max_cost, above=0.0)
        self.max_tokens = check_optional_int("BudgetStopping", "max_tokens", max_tokens, minimum=1)
        self.max_calls = check_optional_int("BudgetStopping", "max_calls", max_calls, minimum=1)
        if verbose not in (0, 1):
            raise ConfigurationError(f"`verbose` must be 0 or 1, got {verbose!r}.")
        self.verbose = int(verbose)
        self.stopped_reason: str | None = None
        self.stopped_epoch: int | None = None
        # Usage totals (in program.usage_totals()'s timeline) at which this run's count starts.
        self._start: dict[str, float] | None = None
        # Consumed amount from a restored backup, applied once the program is attached.
        self._pending: dict[str, float] | None = None
        self._restored = False
        self._epoch = 0  # from the hooks' arguments, for loops that set no FitContext
        # What the finished run consumed: read after the fit, outside its usage scope, the
        # program's usage totals are the LMs' global ones (other runs included).
        self._final: dict[str, float] | None = None

    @property
    def _current_epoch(self) -> int:
        """The fit's epoch (right on a resumed epoch too), else the last hook's argument."""
        context = self.context
        return context.epoch if isinstance(context, FitContext) else self._epoch

    # -- accounting ---------------------------------------------------------------------------
    def _totals(self) -> dict[str, float]:
        usage = self.program.usage_totals()
        return {"cost": usage.cost, "tokens": usage.tokens, "calls": usage.calls}

    def _rebase(self, consumed: dict[str, float]) -> None:
        totals = self._totals()
        self._start = {key: totals[key] - consumed.get(key, 0) for key in totals}

    @property
    def consumed(self) -> dict[str, float]:
        """What this run has used so far: ``{"cost", "tokens", "calls"}``."""
        if self._final is not None:
            return dict(self._final)
        if self._start is None or self._program is None:
            return dict(self._pending or {"cost": 0.0, "tokens": 0, "calls": 0})
        totals = self._totals()
        return {
            "cost": round(totals["cost"] - self._start["cost"], 10),
            "tokens": int(totals["tokens"] - self._start["tokens"]),
            "calls": int(totals["calls"] - self._start["calls"]),
        }

    def _check(self, where: str) -> None:
        if self.stopped_reason is not None and self.program.stop_training:
            return
        if self._start is None:  # a loop that never called on_train_begin: count from now
            self._rebase(self._pending or {})
            self._pending = None
        consumed = self.consumed
        for name, key in _LIMITS:
            limit = getattr(self, name)
            if limit is not None and consumed[key] >= limit:
                self.stopped_reason = name
                self.stopped_epoch = self._current_epoch
                self.program.stop_training = True
                if self.verbose:
                    print(
                        f"BudgetStopping: {key} {consumed[key]:g} reached {name}={limit:g} "
                        f"({where}); stopping training.",
                        flush=True,
                    )
                return

    # -- hooks -----------------------------------------------------------------------------------
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._epoch = 0
        self._final = None
        if self._pending is not None:
            # Restored before the program was attached: count on from the backup's amount.
            self._rebase(self._pending)
            self._pending = None
        elif not self._restored:
            self._start = self._totals()
        self.stopped_reason = None
        self.stopped_epoch = None
        # A resumed run that had already spent its budget must not train any further.
        self._check("at train begin")

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._check(f"epoch {self._current_epoch}, batch {batch}")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch
        self._check(f"end of epoch {epoch}")

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        # The next fit with this instance starts a fresh count unless a backup is restored.
        self._final = self.consumed
        self._restored = False

    # -- state and config ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "consumed": self.consumed,
            "stopped_reason": self.stopped_reason,
            "stopped_epoch": self.stopped_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue counting from the consumed amount saved in ``state``.

        The start offset is recomputed from the *current* usage totals, so this works whether
        or not the LM counters were restored too: with the fit's context restoring them first (the
        normal resume), the offset equals the one of the original run. If the restored amount
        already reaches a limit, training is stopped before another batch runs.
        """
        consumed = {
            "cost": float(state["consumed"].get("cost", 0.0)),
            "tokens": int(state["consumed"].get("tokens", 0)),
            "calls": int(state["consumed"].get("calls", 0)),
        }
        self._final = None
        self.stopped_reason = state.get("stopped_reason")
        self.stopped_epoch = state.get("stopped_epoch")
        self._restored = True
        if self._program is None:
            self._pending = consumed
        else:
            self._pending = None
            self._rebase(consumed)
            # A restored run that had already spent its budget must not start another batch.
            self._check("on restore")

    def get_config(self) -> dict[str, Any]:
        return {
            "max_cost": self.max_cost,
            "max_tokens": self.max_tokens,
            "max_calls": self.max_calls,
            "verbose": self.verbose,
        }
