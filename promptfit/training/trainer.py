"""The training loop: ``compile``, ``fit``, ``evaluate`` and ``predict`` for programs.

Examples of a batch run concurrently (bounded by each language model's ``max_concurrency``);
batches run in order so callbacks see Keras' sequence of hooks. Everything a crash-safe resume
needs (epoch, step, shuffling seed, accumulators, optimizer state, history, usage) lives in one
:class:`~promptfit.training.state.FitState`, which
:class:`~promptfit.callbacks.BackupAndRestore` saves and restores.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from promptfit.callbacks.callback import Callback
from promptfit.callbacks.callback_list import CallbackList
from promptfit.data.adapters import to_data_models, to_targets
from promptfit.errors import ConfigurationError, DataError
from promptfit.language_models.cache import call_origin
from promptfit.language_models.scope import run_scope, usage_totals
from promptfit.language_models.usage import Usage
from promptfit.metrics.metric import Metric
from promptfit.rewards.checking import RewardErrors, check_reward_errors, score_batch
from promptfit.rewards.reward import Reward, get_reward
from promptfit.training.arguments import (
    check_callbacks,
    check_fit_arguments,
    check_optional_batch_size,
    check_verbose,
)
from promptfit.training.state import FitState, data_fingerprint
from promptfit.training.traces import ModuleTrace, collect_traces

if TYPE_CHECKING:
    from promptfit.optimizers.optimizer import Optimizer
    from promptfit.programs.program import Program

__all__ = ["BatchOutcome", "Trainer"]

Verbose = Literal["auto", 0, 1, 2] | int | str

USAGE_KEYS = ("lm_calls", "tokens", "cost", "failed_calls", "retries")


@dataclass
class BatchOutcome:
    """Predictions, rewards and per-module traces of one batch."""

    x: list[Any]
    y: list[Any]
    predictions: list[Any]
    rewards: list[float]
    traces: list[list[ModuleTrace]] = field(default_factory=list)

    @property
    def mean_reward(self) -> float:
        return sum(self.rewards) / len(self.rewards) if self.rewards else 0.0


async def _run_concurrently(fn: Callable[[int], Awaitable[None]], n: int) -> None:
    """Run ``fn(0)`` .. ``fn(n - 1)`` as concurrent tasks and wait for all of them.

    A failure cancels the other tasks and is raised in an ``ExceptionGroup``, as with anyio's
    task groups. asyncio's own ``TaskGroup`` is used because it is about three times cheaper
    per task than anyio's (which builds a cancel scope, two events and a task handle per
    task): one task per example is the hot path of ``evaluate`` and ``fit``.
    """
    async with asyncio.TaskGroup() as group:
        for i in range(n):
            group.create_task(fn(i))


def _batches(n: int, batch_size: int) -> list[range]:
    return [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


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
        self.fit_state: FitState | None = None

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
        from promptfit.optimizers.optimizer import Optimizer

        if reward is None:
            raise ConfigurationError("compile() needs a `reward`, e.g. pf.rewards.ExactMatch().")
        self.reward = get_reward(reward)
        self.reward_errors = check_reward_errors(reward_errors)
        if optimizer is not None and not isinstance(optimizer, Optimizer):
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

    @staticmethod
    def _usage_logs(before: Usage, after: Usage) -> dict[str, float]:
        return {
            "lm_calls": after.calls - before.calls,
            "tokens": after.tokens - before.tokens,
            "cost": round(after.cost - before.cost, 10),
            "failed_calls": after.failed_calls - before.failed_calls,
            "retries": after.retries - before.retries,
        }

    def _require_compiled(self, what: str) -> Reward:
        if not self.compiled or self.reward is None:
            raise ConfigurationError(f"Call program.compile(reward=...) before {what}().")
        return self.reward

    def _read_x(self, x: Any) -> list[Any]:
        program = self._program
        if x is None:
            raise DataError("`x` is required.")
        model = getattr(program, "input_data_model", None)
        if model is None:
            rows = list(x)
            if not all(hasattr(r, "model_dump") for r in rows):
                raise DataError(
                    f"{program.name} does not declare `input_data_model`; pass DataModel "
                    "instances, or give the Program `input_data_model=`."
                )
            return rows
        return to_data_models(x, model, "x")

    def _read_y(self, y: Any, n: int) -> list[Any]:
        program = self._program
        model = getattr(program, "output_data_model", None)
        if y is None:
            raise DataError("`y` is required to compute rewards.")
        if model is not None:
            rows: list[Any] = to_targets(y, model, "y")
        else:
            rows = [r.model_dump(mode="json") if hasattr(r, "model_dump") else r for r in y]
        if len(rows) != n:
            raise DataError(f"`x` has {n} examples but `y` has {len(rows)}.")
        return rows

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
    async def predict(
        self,
        x: Any,
        batch_size: int | None = 32,
        verbose: Verbose = "auto",
        callbacks: Sequence[Callback] | None = None,
    ) -> list[Any]:
        """Run the program on ``x``; returns one output per example, ``None`` where it failed."""
        batch_size = _check_batch_size(batch_size)
        check_verbose(verbose)
        check_callbacks(callbacks)
        rows = self._read_x(x)
        batches = _batches(len(rows), batch_size)
        cbs = self._callbacks(
            _with_progbar(callbacks, verbose, "predict"),
            {"steps": len(batches), "batch_size": batch_size, "verbose": verbose},
        )
        await cbs.call("on_predict_begin", {})
        outputs: list[Any] = []
        for step, indices in enumerate(batches):
            await cbs.call("on_predict_batch_begin", step, {})
            outcome = await self.predict_on_batch([rows[i] for i in indices])
            outputs.extend(outcome.predictions)
            await cbs.call("on_predict_batch_end", step, {"outputs": outcome.predictions})
        await cbs.call("on_predict_end", {})
        return outputs

    # -- evaluate ------------------------------------------------------------------------
    @run_scope
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
    ) -> dict[str, float]:
        """Score the program on ``(x, y)``.

        Args:
            fail_fast: When the first LM calls all fail with the same error (or every call
                fails), raise :class:`~promptfit.errors.LMCallsFailingError` quoting the
                server; ``False`` warns once and runs on.

        Returns:
            ``{"reward": mean reward, <metric name>: value, "lm_calls", "tokens", "cost",
            "failed_calls", "retries"}``; usage counts only this evaluation's LM requests.
        """
        reward = self._require_compiled("evaluate")
        del reward
        batch_size = _check_batch_size(batch_size)
        check_verbose(verbose)
        check_callbacks(callbacks)
        xs = self._read_x(x)
        ys = self._read_y(y, len(xs))
        if not xs:
            raise DataError("`x` is empty; evaluate() needs at least one example.")
        batches = _batches(len(xs), batch_size)
        cbs = self._callbacks(
            _with_progbar(callbacks, verbose, "evaluate"),
            {"steps": len(batches), "batch_size": batch_size, "verbose": verbose},
        )
        return await self._evaluate_loop(xs, ys, batches, cbs)

    async def _evaluate_loop(
        self, xs: list[Any], ys: list[Any], batches: list[range], cbs: CallbackList
    ) -> dict[str, float]:
        before = self.usage_totals()
        for metric in self.metrics:
            metric.reset_state()
        total, count = 0.0, 0
        await cbs.call("on_test_begin", {})
        logs: dict[str, float] = {}
        for step, indices in enumerate(batches):
            await cbs.call("on_test_batch_begin", step, {})
            outcome = await self.run_batch([xs[i] for i in indices], [ys[i] for i in indices])
            for yt, yp, r in zip(outcome.y, outcome.predictions, outcome.rewards, strict=True):
                for metric in self.metrics:
                    metric.update_state(yt, yp, r)
            total += sum(outcome.rewards)
            count += len(outcome.rewards)
            logs = self._logs(total, count, before)
            await cbs.call("on_test_batch_end", step, logs)
        logs = self._logs(total, count, before)
        await cbs.call("on_test_end", logs)
        return logs

    def _logs(self, total: float, count: int, before: Usage) -> dict[str, float]:
        logs: dict[str, float] = {"reward": total / count if count else 0.0}
        for metric in self.metrics:
            logs[metric.name] = float(metric.result())
        logs.update(self._usage_logs(before, self.usage_totals()))
        return logs

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
        from promptfit.callbacks.history import History
        from promptfit.callbacks.progbar_logger import ProgbarLogger

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
        xs = self._read_x(x)
        ys = self._read_y(y, len(xs))
        if not xs:
            raise DataError("`x` is empty; fit() needs at least one example.")
        val_xs: list[Any] = []
        val_ys: list[Any] = []
        if validation_data is not None:
            if not isinstance(validation_data, tuple | list) or len(validation_data) != 2:
                raise DataError("`validation_data` must be a tuple (x_val, y_val).")
            val_xs = self._read_x(validation_data[0])
            val_ys = self._read_y(validation_data[1], len(val_xs))
            if not val_xs:
                raise DataError("`validation_data` is empty; pass examples or leave it out.")
        elif validation_split > 0:
            n_val = int(len(xs) * validation_split)
            if n_val == 0 or n_val == len(xs):
                raise DataError(
                    f"validation_split={validation_split} of {len(xs)} examples leaves an empty "
                    "training or validation set."
                )
            xs, val_xs = xs[:-n_val], xs[-n_val:]
            ys, val_ys = ys[:-n_val], ys[-n_val:]

        batches_per_epoch = math.ceil(len(xs) / batch_size)
        requested_seed = seed
        if seed is None:
            seed = random.SystemRandom().randrange(2**31)
        state = FitState(
            seed=seed,
            requested_seed=requested_seed,
            epochs=epochs,
            epoch=initial_epoch,
            step=0,
            steps_per_epoch=batches_per_epoch,
            fingerprint=data_fingerprint(self._program, xs, ys, val_xs, val_ys, epochs, batch_size),
            xs=xs,
            ys=ys,
            val_xs=val_xs,
            val_ys=val_ys,
        )
        self.fit_state = state
        history = History()
        user_callbacks = list(callbacks or [])
        extra: list[Callback] = []
        if verbose not in (0, "0"):
            extra.append(ProgbarLogger(verbose=verbose))
        # While pf.enable_observability() is on, every fit is tracked by a Monitor unless the
        # user passed one (auto_monitor returns None otherwise and never raises).
        from promptfit.observability.enable import auto_monitor

        if (monitor := auto_monitor(user_callbacks)) is not None:
            extra.append(monitor)
        ordered = (
            [history, *user_callbacks, *extra]
            if not any(isinstance(c, History) for c in user_callbacks)
            else [*user_callbacks, *extra]
        )
        # Callbacks that snapshot the run (BackupAndRestore) run last in every hook: their
        # epoch/batch-end snapshot then includes every other callback's update for that step,
        # and their on_train_begin restore overrides any reset done by the others' hooks.
        ordered = [c for c in ordered if not getattr(c, "snapshots_fit_state", False)] + [
            c for c in ordered if getattr(c, "snapshots_fit_state", False)
        ]
        cbs = CallbackList(ordered, program=self._program)
        history = next(c for c in cbs if isinstance(c, History))
        params = {
            "epochs": epochs,
            "steps": batches_per_epoch,
            "batch_size": batch_size,
            "verbose": verbose,
            "samples": len(xs),
            "validation": bool(val_xs),
            "seed": seed,
            "do_validation": bool(val_xs),
        }
        cbs.set_params(params)
        state.callbacks = cbs
        state.history = history
        self.history = history
        self.stop_training = False
        optimizer = self.optimizer
        optimizer.build(self._program, seed)
        state.optimizer = optimizer
        val_batches = _batches(len(val_xs), val_batch_size)

        epoch_logs: dict[str, Any] = {}
        origin_token = call_origin.set(None)
        try:
            await cbs.on_train_begin({})
            epoch = state.epoch
            while epoch < epochs and not self.stop_training:
                state.epoch = epoch
                order = list(range(len(xs)))
                if shuffle:
                    # state.seed, not the local seed: a restored backup brings its own seed.
                    random.Random(f"{state.seed}:{epoch}").shuffle(order)
                batches = _batches(len(order), batch_size)
                resuming_mid_epoch = state.step > 0
                if not resuming_mid_epoch:
                    state.begin_epoch(self.metrics, self.usage_totals())
                    await cbs.on_epoch_begin(epoch, {})
                for step in range(state.step, len(batches)):
                    indices = [order[i] for i in batches[step]]
                    call_origin.set(state.origin(epoch, step))
                    await cbs.call("on_train_batch_begin", step, {})
                    outcome = await self.run_batch(
                        [xs[i] for i in indices], [ys[i] for i in indices], trace=True
                    )
                    state.record_batch(outcome, self.metrics)
                    await optimizer.on_batch_end(outcome)
                    state.step = step + 1
                    batch_logs = self._train_logs(state)
                    await cbs.call("on_train_batch_end", step, batch_logs)
                    if self.stop_training:
                        break
                call_origin.set(state.origin(epoch, "end"))
                await optimizer.on_epoch_end(epoch)
                epoch_logs = self._train_logs(state)
                if val_xs:
                    call_origin.set(state.origin(epoch, "val"))
                    # The fit's callbacks see validation as Keras shows it: on_test_* hooks.
                    val_logs = await self._evaluate_loop(val_xs, val_ys, val_batches, cbs)
                    await optimizer.on_validation_end(val_logs)  # selection on validation
                    epoch_logs.update({f"val_{k}": v for k, v in val_logs.items()})
                    for key in USAGE_KEYS:
                        epoch_logs[key] += val_logs[key]
                state.step = 0
                state.epoch = epoch + 1
                await cbs.on_epoch_end(epoch, epoch_logs)
                epoch += 1
        except BaseException as error:
            try:
                await cbs.on_train_error(error)
            finally:
                call_origin.reset(origin_token)
                await cbs.on_train_end(epoch_logs)
            raise
        call_origin.reset(origin_token)
        await cbs.on_train_end(epoch_logs)
        return history

    def _train_logs(self, state: FitState) -> dict[str, float]:
        logs: dict[str, float] = {"reward": state.mean_reward}
        for metric in self.metrics:
            logs[metric.name] = float(metric.result())
        logs.update(self._usage_logs(state.epoch_usage_start, self.usage_totals()))
        return logs


def _with_progbar(
    callbacks: Sequence[Callback] | CallbackList | None, verbose: Verbose, mode: str
) -> Sequence[Callback] | CallbackList | None:
    if verbose in (0, "0") or isinstance(callbacks, CallbackList):
        return callbacks
    from promptfit.callbacks.progbar_logger import ProgbarLogger

    return [*(callbacks or []), ProgbarLogger(verbose=verbose, mode=mode)]


def _describe(obj: Any) -> Any:
    if obj is None:
        return None
    try:
        config = obj.get_config()
    except Exception:
        config = {}
    return {"class_name": type(obj).__name__, "config": config}
