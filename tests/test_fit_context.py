"""The typed run context callbacks receive, ``evaluate(return_dict=False)`` and the deprecations.

Why these tests: callbacks used to find the run through ``getattr(program, "fit_state", None)``
and tracked the epoch themselves, with a workaround for a resumed epoch (which gets no
``on_epoch_begin``). Now ``Callback.context`` is set by the callback list for exactly the run,
and its ``epoch`` is right on a resumed epoch too: the resume test restores a backup in the
middle of epoch 1 and checks that TerminateOnError and BudgetStopping report epoch 1 (without
the context's update on restore they say epoch 0). Everything runs on the real test server.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import arithmetic_data

import promptfit as pf
from promptfit.callbacks.backup_and_restore import BackupAndRestore
from promptfit.callbacks.budget_stopping import BudgetStopping
from promptfit.callbacks.callback import Callback
from promptfit.callbacks.early_stopping import EarlyStopping
from promptfit.callbacks.prediction_logger import PredictionLogger
from promptfit.callbacks.terminate_on_error import TerminateOnError
from promptfit.errors import ConfigurationError
from promptfit.training.context import FitContext
from promptfit.training.outcome import BatchOutcome, RewardAccumulator
from promptfit.training.state import FitProgress


class Recorder(Callback):
    """Notes, at every hook, which context it saw and the counters it held."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, Any, int, int, int | None]] = []
        self.contexts: set[int] = set()

    def _note(self, hook: str, batch: int | None = None) -> None:
        context = self.context
        assert context is not None, hook
        self.contexts.add(id(context))
        epoch = context.epoch if isinstance(context, FitContext) else -1
        size = None if context.last_batch is None else len(context.last_batch.predictions)
        self.seen.append((hook, type(context).__name__, epoch, context.step, size))
        if batch is not None and hook.endswith("_batch_begin"):
            assert context.step == batch, (hook, context.step, batch)

    def on_train_begin(self, logs=None):
        self._note("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self._note("epoch_begin")

    def on_train_batch_begin(self, batch, logs=None):
        self._note("train_batch_begin", batch)

    def on_train_batch_end(self, batch, logs=None):
        self._note("train_batch_end", batch)

    def on_test_begin(self, logs=None):
        self._note("test_begin")

    def on_test_end(self, logs=None):
        self._note("test_end")

    def on_epoch_end(self, epoch, logs=None):
        self._note("epoch_end")
        context = self.context
        assert isinstance(context, FitContext)
        # The current epoch for callbacks; the resume position has already moved on.
        assert context.epoch == epoch and context.progress.epoch == epoch + 1

    def on_train_end(self, logs=None):
        self._note("train_end")

    def on_predict_begin(self, logs=None):
        self._note("predict_begin")

    def on_predict_batch_begin(self, batch, logs=None):
        self._note("predict_batch_begin", batch)

    def on_predict_batch_end(self, batch, logs=None):
        self._note("predict_batch_end", batch)

    def on_predict_end(self, logs=None):
        self._note("predict_end")


def test_the_context_is_set_for_the_run_and_cleared_after(calc_program):
    recorder = Recorder()
    x, y = arithmetic_data(7)

    async def main() -> Any:
        program = await calc_program()
        assert recorder.context is None
        history = await program.fit(
            x[:5], y[:5], validation_data=(x[5:], y[5:]), batch_size=2, epochs=2, verbose=0,
            seed=0, shuffle=False, callbacks=[recorder],
        )  # fmt: skip
        return program, history

    program, history = asyncio.run(main())
    assert recorder.context is None and program.optimizer.context is None
    assert len(recorder.contexts) == 1  # one context for the whole fit, validation included
    assert {kind for _, kind, *_ in recorder.seen} == {"FitContext"}
    epoch0 = [(hook, epoch, step, size) for hook, _, epoch, step, size in recorder.seen[:11]]
    assert epoch0 == [
        ("train_begin", 0, 0, None),
        ("epoch_begin", 0, 0, None),
        ("train_batch_begin", 0, 0, None),
        ("train_batch_end", 0, 1, 2),
        ("train_batch_begin", 0, 1, 2),
        ("train_batch_end", 0, 2, 2),
        ("train_batch_begin", 0, 2, 2),
        ("train_batch_end", 0, 3, 1),  # the last batch holds the fifth example
        # Validation does not move the fit's step or last batch.
        ("test_begin", 0, 3, 1),
        ("test_end", 0, 3, 1),
        ("epoch_end", 0, 3, 1),
    ]
    assert recorder.seen[-1][:3] == ("train_end", "FitContext", 1)
    assert history.epoch == [0, 1]

    # A standalone evaluate gets a RunContext of its own, cleared after on_test_end.
    evaluating = Recorder()
    asyncio.run(program.evaluate(x, y, batch_size=4, verbose=0, callbacks=[evaluating]))
    assert [(hook, kind, step) for hook, kind, _, step, _ in evaluating.seen] == [
        ("test_begin", "RunContext", 0),
        ("test_end", "RunContext", 2),
    ]
    assert evaluating.context is None

    # So does predict (no targets): before, its hooks ran with no context at all.
    predicting = Recorder()
    asyncio.run(program.predict(x[:5], batch_size=2, verbose=0, callbacks=[predicting]))
    assert [(hook, kind, step, size) for hook, kind, _, step, size in predicting.seen] == [
        ("predict_begin", "RunContext", 0, None),
        ("predict_batch_begin", "RunContext", 0, None),
        ("predict_batch_end", "RunContext", 1, 2),
        ("predict_batch_begin", "RunContext", 1, 2),
        ("predict_batch_end", "RunContext", 2, 2),
        ("predict_batch_begin", "RunContext", 2, 2),
        ("predict_batch_end", "RunContext", 3, 1),
        ("predict_end", "RunContext", 3, 1),
    ]
    assert predicting.context is None


def test_the_context_holds_the_runs_objects_and_is_cleared_after_a_crash(calc_program):
    x, y = arithmetic_data(6)
    captured: list[FitContext] = []

    class Crash(Callback):
        def on_train_batch_end(self, batch, logs=None):
            assert isinstance(self.context, FitContext)
            captured.append(self.context)
            raise RuntimeError("crash")

    crash = Crash()

    async def main() -> pf.Program:
        program = await calc_program()
        with pytest.raises(RuntimeError, match="crash"):
            await program.fit(
                x[:4], y[:4], validation_data=(x[4:], y[4:]), batch_size=2, epochs=2,
                verbose=0, seed=3, callbacks=[crash],
            )  # fmt: skip
        return program

    program = asyncio.run(main())
    (context,) = captured
    assert crash.context is None and program.optimizer.context is None
    assert context.program is program and context.optimizer is program.optimizer
    assert context.history is program.history and crash in list(context.callbacks)
    assert len(context.xs) == 4 and len(context.val_xs) == 2 and context.seed == 3
    assert context.epochs == 2 and context.steps_per_epoch == 2 and context.global_step == 1
    assert context.params["do_validation"] is True
    assert isinstance(context.last_batch, BatchOutcome) and len(context.last_batch.x) == 2


def test_an_evaluate_inside_a_hook_gives_the_callback_its_fit_context_back(calc_program):
    """A callback that evaluates with itself in the list sees RunContext, then FitContext."""
    x, y = arithmetic_data(6)
    kinds: list[str] = []

    class EvaluatesEachEpoch(Callback):
        def on_test_begin(self, logs=None):
            kinds.append(type(self.context).__name__)

        async def on_epoch_end(self, epoch, logs=None):
            kinds.append(type(self.context).__name__)
            await self.program.evaluate(x[4:], y[4:], verbose=0, callbacks=[self])
            kinds.append(type(self.context).__name__)

    callback = EvaluatesEachEpoch()

    async def main() -> None:
        program = await calc_program()
        await program.fit(x[:4], y[:4], batch_size=2, epochs=1, verbose=0, callbacks=[callback])

    asyncio.run(main())
    assert kinds == ["FitContext", "RunContext", "FitContext"]
    assert callback.context is None


def _fit_kwargs(x: list[Any], y: list[Any]) -> dict[str, Any]:
    return {
        "x": x[:8], "y": y[:8], "validation_data": (x[8:], y[8:]), "batch_size": 2,
        "epochs": 3, "verbose": 0, "seed": 1, "shuffle": False, "fail_fast": False,
    }  # fmt: skip


def _failed_calls(saved: dict[str, Any]) -> int:
    """Failed calls of every LM at backup time (the program has one LM)."""
    return sum(usage["failed_calls"] for usage in saved["usage"].values())


def test_a_resumed_epoch_is_known_to_terminate_on_error_and_budget_stopping(
    calc_program, tmp_path: Path
):
    """Resume in the middle of epoch 1 (no on_epoch_begin): both callbacks say epoch 1."""
    backup_dir = tmp_path / "backup"
    x, y = arithmetic_data(10)

    class CrashAtGlobalStep(Callback):
        def __init__(self, armed: bool) -> None:
            super().__init__()
            self.armed = armed

        def on_train_batch_end(self, batch, logs=None):
            context = self.context
            assert isinstance(context, FitContext)
            if self.armed and context.global_step == 6:  # epoch 1, after its second batch
                raise RuntimeError("crash")

    async def main() -> tuple[TerminateOnError, BudgetStopping]:
        # A fixed tag makes the server's injected failures the same in every session (they
        # depend on the request body and attempt number only), so which calls fail is fixed.
        program = await calc_program(
            error_rate=0.5, tag="fit-context-resume", lm_kwargs={"max_retries": 0}
        )
        with pytest.raises(RuntimeError, match="crash"):
            await program.fit(
                **_fit_kwargs(x, y),
                callbacks=[
                    BudgetStopping(max_calls=10**6),
                    CrashAtGlobalStep(armed=True),
                    BackupAndRestore(backup_dir, save_freq=1),
                ],
            )
        saved = json.loads((backup_dir / "backup.json").read_text())["fit_state"]
        assert (saved["epoch"], saved["step"]) == (1, 1)  # the backup of global step 5
        (budget_state,) = [v for k, v in saved["callbacks"].items() if "BudgetStopping" in k]
        spent = budget_state["consumed"]["calls"]
        # Epoch 1 already had failed calls before the backup (restored with the usage), and
        # one more call than at the backup exhausts the budget: both trip at the first batch
        # of the resumed run, in the middle of epoch 1.
        assert saved["epoch_usage_start"]["failed_calls"] < _failed_calls(saved)
        terminate = TerminateOnError(max_failed_calls=1)
        budget = BudgetStopping(max_calls=spent + 1)
        await program.fit(
            **_fit_kwargs(x, y),
            callbacks=[
                budget,  # at the index it had in the backed-up run (TerminateOnError is
                terminate,  # stateless: it is not keyed)
                CrashAtGlobalStep(armed=False),
                BackupAndRestore(backup_dir, save_freq=1),
            ],
        )
        return terminate, budget

    terminate, budget = asyncio.run(main())
    assert budget.stopped_reason == "max_calls" and budget.stopped_epoch == 1
    assert terminate.stopped_reason is not None
    assert "in epoch 1 (after batch 1)" in terminate.stopped_reason, terminate.stopped_reason


def test_evaluate_return_dict_false_lists_the_logs_in_metrics_names_order(calc_program):
    x, y = arithmetic_data(5)
    ends: list[dict[str, float]] = []

    class LastLogs(Callback):
        def on_test_end(self, logs=None):
            ends.append(dict(logs or {}))

    async def main() -> tuple[pf.Program, Any]:
        program = await calc_program()
        values = await program.evaluate(
            x, y, batch_size=2, verbose=0, callbacks=[LastLogs()], return_dict=False
        )
        return program, values

    program, values = asyncio.run(main())
    assert program.metrics_names == [
        "reward", "accuracy", "lm_calls", "tokens", "cost", "failed_calls", "retries",
    ]  # fmt: skip
    (logs,) = ends
    assert isinstance(values, list) and list(logs) == program.metrics_names
    assert values == [logs[name] for name in program.metrics_names]
    assert values[0] > 0 and values[2] == 5  # reward, lm_calls: real values, in order
    with pytest.raises(ConfigurationError, match="return_dict"):
        asyncio.run(program.evaluate(x, y, verbose=0, return_dict="no"))


# -- deprecated names -----------------------------------------------------------------------------


def test_program_fit_state_is_a_deprecated_view_of_the_last_fit(calc_program):
    x, y = arithmetic_data(6)

    async def main() -> pf.Program:
        program = await calc_program()
        with pytest.warns(DeprecationWarning, match="fit_state"):
            assert program.fit_state is None
        await program.fit(
            x[:4], y[:4], validation_data=(x[4:], y[4:]), batch_size=2, epochs=2, verbose=0,
            seed=5,
        )  # fmt: skip
        return program

    program = asyncio.run(main())
    with pytest.warns(DeprecationWarning, match=r"self\.context"):
        state = program.fit_state
    assert state is not None
    assert (state.epoch, state.step, state.seed, state.epochs) == (2, 0, 5, 2)
    assert len(state.xs) == 4 and len(state.val_ys) == 2 and state.batch_examples == 2
    assert state.history is program.history
    assert state.state_dict(program)["epoch"] == 2


def test_renamed_classes_and_the_validation_param_warn(calc_program):
    import promptfit.callbacks._monitoring as monitoring
    import promptfit.training.state as state_module

    with pytest.warns(DeprecationWarning, match="FitProgress"):
        assert state_module.FitState is FitProgress
    with pytest.warns(DeprecationWarning, match="MetricWatcher"):
        assert monitoring.MetricMonitor is monitoring.MetricWatcher

    seen: list[Any] = []

    class ReadsParams(Callback):
        def on_train_begin(self, logs=None):
            seen.append("validation" in self.params)
            with pytest.warns(DeprecationWarning, match="do_validation"):
                seen.append(self.params["validation"])
            with pytest.warns(DeprecationWarning, match="do_validation"):
                seen.append(self.params.get("validation"))
            seen.append(self.params["do_validation"])

    x, y = arithmetic_data(4)

    async def main() -> None:
        program = await calc_program()
        await program.fit(x, y, validation_split=0.5, batch_size=2, verbose=0,
                          callbacks=[ReadsParams()])  # fmt: skip

    asyncio.run(main())
    assert seen == [False, True, True, True]


# -- the shared accumulator and argument checks ---------------------------------------------------


def test_one_accumulator_counts_rewards_and_metrics_for_every_caller():
    accuracy = pf.metrics.Accuracy()
    accumulator = RewardAccumulator([accuracy])
    accumulator.reset()
    first = BatchOutcome(x=[1, 2], y=[{"a": 1}, {"a": 2}], predictions=[{"a": 1}, None],
                         rewards=[1.0, 0.0])  # fmt: skip
    second = BatchOutcome(x=[3], y=[{"a": 3}], predictions=[{"a": 3}], rewards=[0.5])
    accumulator.add(first)
    accumulator.add(second)
    assert (accumulator.total, accumulator.count) == (1.5, 3)
    assert accumulator.results() == {"reward": 0.5, "accuracy": pytest.approx(2 / 3)}
    assert first.mean_reward == 0.5 and first.failed_predictions == 1
    assert BatchOutcome([], [], [], []).mean_reward == 0.0
    accumulator.reset()
    assert accumulator.results() == {"reward": 0.0, "accuracy": 0.0}


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: TerminateOnError(max_failed_calls=0),
            "TerminateOnError: `max_failed_calls` must be a positive integer or None, got 0",
        ),
        (
            lambda: TerminateOnError(max_failure_rate=1.5),
            r"TerminateOnError: `max_failure_rate` must be a number in \(0, 1\] or None",
        ),
        (
            lambda: BudgetStopping(max_calls=True),
            "BudgetStopping: `max_calls` must be a positive integer or None, got True",
        ),
        (
            lambda: BudgetStopping(max_cost=float("nan")),
            "BudgetStopping: `max_cost` must be a positive number or None, got nan",
        ),
        (
            lambda: PredictionLogger("p.jsonl", num_samples=0),
            "PredictionLogger: `num_samples` must be a positive integer, got 0",
        ),
        (
            lambda: PredictionLogger("p.jsonl", seed="1"),
            "PredictionLogger: `seed` must be an integer, got '1'",
        ),
        (
            lambda: EarlyStopping(patience=-1),
            "EarlyStopping: `patience` must be an integer >= 0, got -1",
        ),
        (
            lambda: EarlyStopping(baseline=float("inf")),
            "EarlyStopping: `baseline` must be a finite number or None, got inf",
        ),
        (
            lambda: BackupAndRestore("b", save_freq=0),
            "BackupAndRestore: `save_freq` must be 'epoch' or a positive number of batches",
        ),
    ],
)
def test_callback_arguments_are_checked_by_one_helper_naming_the_callback(build, message):
    with pytest.raises(ConfigurationError, match=message):
        build()
