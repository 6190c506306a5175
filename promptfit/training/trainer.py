"""The training API: ``compile``, ``fit``, ``evaluate`` and ``predict`` for programs.

Examples of a batch run concurrently (bounded by each language model's ``max_concurrency``);
batches run in order so callbacks see Keras' sequence of hooks. This module checks arguments,
reads the data (:mod:`promptfit.training.data`) and builds each run's typed
:class:`~promptfit.training.context.FitContext` (``Callback.context``); the loops themselves
are :mod:`promptfit.training.loop`. The counters a crash-safe resume needs (epoch, step,
shuffling seed, accumulators, usage at epoch start) are the context's
:class:`~promptfit.training.state.FitProgress`, which
:class:`~promptfit.callbacks.BackupAndRestore` saves and restores with the rest of the run.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

from promptfit.callbacks.callback import Callback
from promptfit.callbacks.callback_list import CallbackList
from promptfit.errors import ConfigurationError, DataError
from promptfit.language_models.scope import run_scope, usage_totals
from promptfit.language_models.usage import Usage
from promptfit.metrics.metric import Metric
from promptfit.rewards.checking import RewardErrors, check_reward_errors, score_batch
from promptfit.rewards.function_reward import get_reward
from promptfit.rewards.reward import Reward
from promptfit.training.arguments import (
    check_callbacks,
    check_fit_arguments,
    check_optional_batch_size,
    check_verbose,
)
from promptfit.training.concurrency import run_concurrently as _run_concurrently
from promptfit.training.context import DeprecatedFitState, FitContext, FitParams, RunContext
from promptfit.training.data import fit_data, read_x, read_y
from promptfit.training.loop import USAGE_KEYS, evaluate_loop, fit_loop, split_batches
from promptfit.training.outcome import BatchOutcome, RewardAccumulator
from promptfit.training.state import FitProgress, data_fingerprint
from promptfit.training.traces import ModuleTrace, collect_traces

if TYPE_CHECKING:
    from promptfit.optimizers.optimizer import Optimizer
    from promptfit.programs.program import Program

# BatchOutcome lives in training/outcome.py; it is re-exported here for code that imported it
# from the trainer.
__all__ = ["BatchOutcome", "Trainer"]

Verbose = Literal["auto", 0, 1, 2] | int | str

# What fit calls on an optimizer (the pf.optimizers.Optimizer interface).
_OPTIMIZER_HOOKS = (
    "build",
    "on_batch_end",
    "on_epoch_end",
    "on_validation_end",
    "state_dict",
    "load_state_dict",
    "get_config",
)


def _check_batch_size(batch_size: int | None) -> int:
    return check_optional_batch_size("batch_size", batch_size, 32)


class Trainer:
    """Mixin that gives :class:`~promptfit.Program` its Keras-style training API."""

    def __init__(self) -> None:
        self.compiled = False
        self.reward: Reward | None = None
        self.optimizer: Optimizer | None = None
        self.metrics: list[Metric] = []
        self.stop_training = False
        self.history: Any = None
        # The latest fit's context, for the deprecated ``fit_state`` only: callbacks get the
        # context through ``Callback.context``, the optimizer through ``Optimizer.context``.
        self._last_fit_context: FitContext | None = None

    @property
    def fit_state(self) -> DeprecatedFitState | None:
        """Deprecated: the latest fit's context and counters, read like the former FitState.

        Callbacks read ``self.context`` instead (a
        :class:`~promptfit.training.context.FitContext`, set during the run only).
        """
        warnings.warn(
            "program.fit_state is deprecated; in a callback read self.context (a FitContext: "
            "epoch, step, last_batch, data, history, optimizer, progress).",
            DeprecationWarning,
            stacklevel=2,
        )
        context = self._last_fit_context
        return None if context is None else DeprecatedFitState(context)

    @property
    def metrics_names(self) -> list[str]:
        """The keys of ``evaluate``'s logs, in order: what ``return_dict=False`` lists."""
        return ["reward", *(m.name for m in self.metrics), *USAGE_KEYS]

    # -- compile -------------------------------------------------------------------------
    def compile(
        self,
        reward: Any = None,
        optimizer: Optimizer | None = None,
        metrics: Sequence[Metric] | None = None,
        reward_errors: RewardErrors = "raise",
    ) -> None:
        """Set the reward, the optimizer and the metrics used by ``fit`` and ``evaluate``.

        Args:
            reward: A :class:`~promptfit.rewards.Reward` or a function ``(y_true, y_pred)``
                returning a float in [0, 1].
            optimizer: A :class:`~promptfit.optimizers.Optimizer` (needed by ``fit`` only).
            metrics: Extra :class:`~promptfit.metrics.Metric` objects, logged by name.
            reward_errors: What a reward that *raises* does: ``"raise"`` stops the run with
                :class:`~promptfit.errors.RewardError` naming the reward and the example;
                ``"record"`` scores the example 0 and logs one warning per reward. A value
                outside [0, 1] or not a number is always a ``RewardError``.
        """
        if reward is None:
            raise ConfigurationError("compile() needs a `reward`, e.g. pf.rewards.ExactMatch().")
        self.reward = get_reward(reward)
        self.reward_errors = check_reward_errors(reward_errors)
        # Checked by what fit calls, not by class: training sits below optimizers in the
        # package layers (docs/concepts/architecture.md), so it never imports them.
        if optimizer is not None and not all(
            callable(getattr(optimizer, hook, None)) for hook in _OPTIMIZER_HOOKS
        ):
            raise ConfigurationError(
                f"`optimizer` must be a pf.optimizers.Optimizer, got {type(optimizer).__name__}."
            )
        self.optimizer = optimizer
        metrics = list(metrics or [])
        names = ["reward", *USAGE_KEYS]
        for metric in metrics:
            if not isinstance(metric, Metric):
                raise ConfigurationError(
                    f"Metrics must be pf.metrics.Metric instances, got {type(metric).__name__}."
                )
            if metric.name in names:
                raise ConfigurationError(
                    f"Two metrics (or a metric and a built-in log key) are named "
                    f"{metric.name!r}; pass `name=` to tell them apart."
                )
            names.append(metric.name)
        self.metrics = metrics
        self.compiled = True

    def get_compile_config(self) -> dict[str, Any]:
        return {
            "reward": _describe(self.reward),
            "optimizer": _describe(self.optimizer),
            "metrics": [_describe(m) for m in self.metrics],
        }

    # -- helpers -------------------------------------------------------------------------
    @property
    def _program(self) -> Program:
        return self  # type: ignore[return-value]

    def all_language_models(self) -> list[Any]:
        """LMs of the program, the reward and the optimizer (each once)."""
        seen: dict[int, Any] = {}
        sources = list(self._program.language_models)
        if self.reward is not None:
            sources += self.reward.language_models
        if self.optimizer is not None:
            sources += self.optimizer.language_models
        for lm in sources:
            seen.setdefault(id(lm), lm)
        return list(seen.values())

    def usage_totals(self) -> Usage:
        """Usage of this program's LMs: by the current fit/evaluate inside one, else in total."""
        return usage_totals(self.all_language_models())

    def _require_compiled(self, what: str) -> Reward:
        if not self.compiled or self.reward is None:
            raise ConfigurationError(f"Call program.compile(reward=...) before {what}().")
        return self.reward

    # -- core batch runner ---------------------------------------------------------------
    async def predict_on_batch(self, x: Sequence[Any], trace: bool = False) -> BatchOutcome:
        """Run the program on every example of ``x`` concurrently; failures give ``None``."""
        n = len(x)
        predictions: list[Any] = [None] * n
        traces: list[list[ModuleTrace]] = [[] for _ in range(n)]
        program = self._program

        async def run(i: int) -> None:
            if trace:
                with collect_traces() as recorded:
                    predictions[i] = await program(x[i])
                traces[i] = recorded
            else:
                predictions[i] = await program(x[i])

        if n == 1:
            await run(0)
        else:
            await _run_concurrently(run, n)
        return BatchOutcome(list(x), [], predictions, [], traces)

    async def run_batch(
        self, x: Sequence[Any], y: Sequence[Any], trace: bool = False
    ) -> BatchOutcome:
        """Predict and score one batch (used by fit, evaluate and optimizers)."""
        reward = self._require_compiled("run_batch")
        outcome = await self.predict_on_batch(x, trace=trace)
        # Checked values (numbers in [0, 1]); a failing reward is a RewardError, not a bare
        # ExceptionGroup (see promptfit.rewards.checking).
        outcome.rewards = await score_batch(
            reward, x, y, outcome.predictions, getattr(self, "reward_errors", "raise")
        )
        outcome.y = list(y)
        return outcome

    def _callbacks(
        self, callbacks: Sequence[Callback] | CallbackList | None, params: dict[str, Any]
    ) -> CallbackList:
        if isinstance(callbacks, CallbackList):
            callbacks.set_program(self._program)
            callbacks.set_params(params)
            return callbacks
        return CallbackList(list(callbacks or []), program=self._program, params=params)

    # -- predict -------------------------------------------------------------------------
    @run_scope
    async def predict(
        self,
        x: Any,
        batch_size: int | None = 32,
        verbose: Verbose = "auto",
        callbacks: Sequence[Callback] | None = None,
        *,
        fail_fast: bool = True,
    ) -> list[Any]:
        """Run the program on ``x``; returns one output per example, ``None`` where it failed.

        Args:
            fail_fast: As for :meth:`evaluate`: a server failing every call raises (or, with
                ``False``, warns once) instead of returning a list of ``None``.
        """
        batch_size = _check_batch_size(batch_size)
        check_verbose(verbose)
        check_callbacks(callbacks)
        rows = read_x(self._program, x)
        batches = split_batches(len(rows), batch_size)
        params = {"steps": len(batches), "batch_size": batch_size, "verbose": verbose}
        cbs = self._callbacks(_with_progbar(callbacks, verbose, "predict"), params)
        context = RunContext(program=self._program, callbacks=cbs, params=params, xs=rows)
        outputs: list[Any] = []
        with cbs.running(context):
            await cbs.call("on_predict_begin", {})
            for step, indices in enumerate(batches):
                await cbs.call("on_predict_batch_begin", step, {})
                outcome = await self.predict_on_batch([rows[i] for i in indices])
                outputs.extend(outcome.predictions)
                context.step, context.last_batch = step + 1, outcome
                await cbs.call("on_predict_batch_end", step, {"outputs": outcome.predictions})
            await cbs.call("on_predict_end", {})
        return outputs

    # -- evaluate ------------------------------------------------------------------------
    @overload
    async def evaluate(
        self,
        x: Any = ...,
        y: Any = ...,
        batch_size: int | None = ...,
        verbose: Verbose = ...,
        callbacks: Sequence[Callback] | CallbackList | None = ...,
        return_dict: Literal[True] = ...,
        *,
        fail_fast: bool = ...,
    ) -> dict[str, float]: ...

    @overload
    async def evaluate(
        self,
        x: Any = ...,
        y: Any = ...,
        batch_size: int | None = ...,
        verbose: Verbose = ...,
        callbacks: Sequence[Callback] | CallbackList | None = ...,
        return_dict: Literal[False] = ...,
        *,
        fail_fast: bool = ...,
    ) -> list[float]: ...

    @run_scope  # type: ignore[misc]
    async def evaluate(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = 32,
        verbose: Verbose = "auto",
        callbacks: Sequence[Callback] | CallbackList | None = None,
        return_dict: bool = True,
        *,
        fail_fast: bool = True,
    ) -> dict[str, float] | list[float]:
        """Score the program on ``(x, y)``.

        Args:
            return_dict: ``True`` returns the logs as a dict; ``False`` (Keras' default) a
                list of the same values in :attr:`metrics_names` order.
            fail_fast: When the first LM calls all fail with the same error (or every call
                fails), raise :class:`~promptfit.errors.LMCallsFailingError` quoting the
                server; ``False`` warns once and runs on.

        Returns:
            ``{"reward": mean reward, <metric name>: value, "lm_calls", "tokens", "cost",
            "failed_calls", "retries"}``; usage counts only this evaluation's LM requests.
            With ``return_dict=False``: ``[logs[name] for name in program.metrics_names]``.

        Raises:
            ConfigurationError: ``return_dict`` is not a bool.
        """
        self._require_compiled("evaluate")
        if not isinstance(return_dict, bool):
            raise ConfigurationError(
                f"`return_dict` must be True (a dict of logs) or False (a list in "
                f"program.metrics_names order), got {return_dict!r:.60}."
            )
        batch_size = _check_batch_size(batch_size)
        check_verbose(verbose)
        check_callbacks(callbacks)
        xs = read_x(self._program, x)
        ys = read_y(self._program, y, len(xs))
        if not xs:
            raise DataError("`x` is empty; evaluate() needs at least one example.")
        batches = split_batches(len(xs), batch_size)
        params = {"steps": len(batches), "batch_size": batch_size, "verbose": verbose}
        cbs = self._callbacks(_with_progbar(callbacks, verbose, "evaluate"), params)
        context = RunContext(program=self._program, callbacks=cbs, params=params, xs=xs, ys=ys)
        with cbs.running(context):
            logs = await evaluate_loop(self._program, xs, ys, batches, cbs, context)
        return logs if return_dict else [logs[name] for name in self.metrics_names]

    # -- fit -----------------------------------------------------------------------------
    @run_scope
    async def fit(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = 32,
        epochs: int = 1,
        verbose: Verbose = "auto",
        callbacks: Sequence[Callback] | None = None,
        validation_split: float = 0.0,
        validation_data: tuple[Any, Any] | None = None,
        shuffle: bool = True,
        initial_epoch: int = 0,
        seed: int | None = None,
        validation_batch_size: int | None = None,
        *,
        fail_fast: bool = True,
    ) -> Any:
        """Train the program's variables with the compiled optimizer.

        Args:
            x: Training inputs (DataModels, dicts or a DataFrame).
            y: Training targets.
            batch_size: Examples per step (run concurrently).
            epochs: Index of the last epoch (as in Keras: with ``initial_epoch``, the run
                covers epochs ``initial_epoch`` .. ``epochs - 1``).
            verbose: ``"auto"``/1 progress bar, 2 one line per epoch, 0 silent.
            callbacks: :class:`~promptfit.callbacks.Callback` instances.
            validation_split: Fraction of the data (taken from the end, before shuffling,
                as Keras does) held out for validation.
            validation_data: ``(x_val, y_val)``; overrides ``validation_split``.
            shuffle: Shuffle the training data every epoch.
            initial_epoch: Epoch to start from.
            seed: Seed for shuffling and the optimizer; a run with the same seed and a
                deterministic LM is reproduced exactly.
            validation_batch_size: Batch size for validation (defaults to ``batch_size``).
            fail_fast: When the run's first LM calls all fail with the same error (or every
                call fails), raise :class:`~promptfit.errors.LMCallsFailingError` quoting the
                server instead of logging reward 0; ``False`` warns once and trains on.

        Returns:
            The :class:`~promptfit.callbacks.History` of the run.
        """
        self._require_compiled("fit")
        if self.optimizer is None:
            raise ConfigurationError(
                "fit() needs an optimizer: program.compile(reward=..., "
                "optimizer=pf.optimizers.RandomFewShot())."
            )
        check_fit_arguments(
            epochs=epochs,
            initial_epoch=initial_epoch,
            validation_split=validation_split,
            seed=seed,
            verbose=verbose,
            callbacks=callbacks,
            shuffle=shuffle,
            validation_data=validation_data,
        )
        batch_size = _check_batch_size(batch_size)
        val_batch_size = check_optional_batch_size(
            "validation_batch_size", validation_batch_size, batch_size
        )
        xs, ys, val_xs, val_ys = fit_data(self._program, x, y, validation_split, validation_data)

        batches_per_epoch = math.ceil(len(xs) / batch_size)
        requested_seed = seed
        if seed is None:
            seed = random.SystemRandom().randrange(2**31)
        state = FitProgress(
            seed=seed,
            requested_seed=requested_seed,
            epochs=epochs,
            epoch=initial_epoch,
            step=0,
            steps_per_epoch=batches_per_epoch,
            fingerprint=data_fingerprint(self._program, xs, ys, val_xs, val_ys, epochs, batch_size),
            rewards=RewardAccumulator(self.metrics),
        )
        # The list adds History, the progress bar and registered defaults (the Monitor of
        # pf.enable_observability()), with snapshot callbacks last (see CallbackList).
        cbs = CallbackList(
            callbacks,
            add_history=True,
            add_progbar=verbose not in (0, "0"),
            verbose=verbose,
            add_defaults=True,
            program=self._program,
        )
        history = cbs.history
        params = FitParams(
            epochs=epochs,
            steps=batches_per_epoch,
            batch_size=batch_size,
            verbose=verbose,
            samples=len(xs),
            seed=seed,
            do_validation=bool(val_xs),
        )
        cbs.set_params(params)
        self.history = history
        self.stop_training = False
        optimizer = self.optimizer
        optimizer.build(self._program, seed)
        context = FitContext(
            program=self._program,
            callbacks=cbs,
            params=params,
            progress=state,
            epoch=initial_epoch,
            xs=xs,
            ys=ys,
            val_xs=val_xs,
            val_ys=val_ys,
            history=history,
            optimizer=optimizer,
        )
        self._last_fit_context = context
        val_batches = split_batches(len(val_xs), val_batch_size)

        optimizer.context = context
        try:
            with cbs.running(context):
                await fit_loop(context, shuffle, batch_size, val_batches)
        finally:
            optimizer.context = None
        return history


def _with_progbar(
    callbacks: Sequence[Callback] | CallbackList | None, verbose: Verbose, mode: str
) -> Sequence[Callback] | CallbackList | None:
    if verbose in (0, "0") or isinstance(callbacks, CallbackList):
        return callbacks
    return CallbackList(callbacks, add_progbar=True, verbose=verbose, progbar_mode=mode)


def _describe(obj: Any) -> Any:
    if obj is None:
        return None
    try:
        config = obj.get_config()
    except Exception:
        config = {}
    return {"class_name": type(obj).__name__, "config": config}
