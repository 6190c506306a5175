"""BudgetStopping, TerminateOnError, LambdaCallback and PredictionLogger on real fits.

Why: these callbacks guard money (budgets), time (dead providers) and insight (what the
program answers). Each test runs ``fit`` against the fake LLM server, whose usage counters,
injected failures (``error_rate``) and litellm custom pricing are real, and checks what the
callback did to the run: where it stopped, what it wrote, what survives a resume.
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
from promptfit.callbacks.callback import HOOKS
from promptfit.callbacks.callback_list import CallbackList
from promptfit.callbacks.lambda_callback import LambdaCallback
from promptfit.callbacks.prediction_logger import PredictionLogger
from promptfit.callbacks.serialization import deserialize, serialize
from promptfit.callbacks.terminate_on_error import TerminateOnError
from promptfit.errors import ConfigurationError, SerializationError
from promptfit.training.context import FitContext
from promptfit.training.state import FitProgress

PRICED = {"input_cost_per_token": 1e-3, "output_cost_per_token": 2e-3}


class BatchLog(pf.callbacks.Callback):
    """Keeps every training batch's (epoch, batch, logs) and what a probe returned then."""

    def __init__(self, probe: Any = None) -> None:
        super().__init__()
        self.probe = probe
        self.batches: list[tuple[int, int, dict[str, Any], Any]] = []
        self.begins: list[Any] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.begins.append(self.probe() if self.probe is not None else None)

    def on_train_batch_end(self, batch, logs=None):
        assert isinstance(self.context, FitContext)
        probe = self.probe() if self.probe is not None else None
        self.batches.append((self.context.epoch, batch, dict(logs or {}), probe))


async def _fit(program: pf.Program, n: int = 8, **kwargs: Any) -> Any:
    x, y = arithmetic_data(n + 2)
    options = {"batch_size": 2, "epochs": 2, "verbose": 0, "seed": 0, "shuffle": False}
    options.update(kwargs)
    return await program.fit(x[:n], y[:n], validation_data=(x[n:], y[n:]), **options)


# -- BudgetStopping ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "at least one limit"),
        ({"max_cost": 0}, "max_cost"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_calls": 2.5}, "max_calls"),
        ({"max_calls": True}, "max_calls"),
        ({"max_cost": float("inf")}, "max_cost"),
        ({"max_calls": 3, "verbose": 2}, "verbose"),
    ],
)
def test_budget_stopping_rejects_bad_limits(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        BudgetStopping(**kwargs)


def test_budget_stopping_stops_at_the_batch_that_reaches_max_calls(calc_program, capsys):
    budget = BudgetStopping(max_calls=5, verbose=1)
    log = BatchLog(probe=lambda: budget.consumed["calls"])

    async def main() -> Any:
        program = await calc_program()
        history = await _fit(program, epochs=3, callbacks=[budget, log])
        return program, history

    program, history = asyncio.run(main())
    assert budget.stopped_reason == "max_calls"
    assert budget.stopped_epoch == 0
    calls = [probe for *_, probe in log.batches]
    # Every batch but the last stayed under the limit; the last one reached it.
    assert all(c < 5 for c in calls[:-1]) and calls[-1] >= 5
    assert len(log.batches) < 4  # stopped before the end of the first epoch
    # The epoch in which it stopped was still validated and recorded.
    assert history.epoch == [0] and history.history["val_reward"][0] is not None
    assert program.stop_training is True
    assert "max_calls=5" in capsys.readouterr().out
    # Validation ran after the stop, so the final count includes it.
    assert budget.consumed["calls"] >= calls[-1]


class CallsPerBatch(pf.callbacks.Callback):
    """The budget's consumed calls at the end of every training batch (no fit internals)."""

    def __init__(self, budget: BudgetStopping) -> None:
        super().__init__()
        self.budget = budget
        self.calls: list[int] = []

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(self.budget.consumed["calls"])


def test_budget_stopping_stops_when_a_batch_lands_exactly_on_the_limit(calc_program):
    """``max_calls=N`` is reached at N calls, not N + 1 (the limit is inclusive)."""

    async def run(limit: int) -> tuple[BudgetStopping, CallsPerBatch]:
        budget = BudgetStopping(max_calls=limit)
        seen = CallsPerBatch(budget)
        # A new model tag per program: the second run pays the same calls, none cached.
        await _fit(await calc_program(), epochs=1, callbacks=[budget, seen])
        return budget, seen

    _, free = asyncio.run(run(10_000))
    exact = free.calls[0]  # what the first batch costs (deterministic for this seed)
    assert exact > 0 and len(free.calls) == 4
    budget, seen = asyncio.run(run(exact))
    assert seen.calls == [exact]  # stopped after the batch that reached the limit exactly
    assert budget.stopped_reason == "max_calls"


def test_budget_stopping_counts_cost_and_tokens(calc_program):
    cost_budget = BudgetStopping(max_cost=0.5)
    token_budget = BudgetStopping(max_tokens=10_000_000)

    async def main() -> Any:
        program = await calc_program(lm_kwargs=PRICED)
        await _fit(program, epochs=3, callbacks=[cost_budget, token_budget])
        return program

    program = asyncio.run(main())
    assert cost_budget.stopped_reason == "max_cost"
    assert cost_budget.consumed["cost"] >= 0.5
    assert token_budget.stopped_reason is None
    usage = program.usage_totals()
    # Both started at zero: consumption equals the LMs' own counters.
    assert token_budget.consumed == {
        "cost": pytest.approx(usage.cost),
        "tokens": usage.tokens,
        "calls": usage.calls,
    }


def test_budget_stopping_counts_from_train_begin_only(calc_program):
    budget = BudgetStopping(max_calls=1000)

    async def main() -> Any:
        program = await calc_program()
        x, y = arithmetic_data(14)
        await program.evaluate(x[10:], y[10:], verbose=0)  # spent before the fit
        before = program.usage_totals().calls
        await _fit(program, epochs=1, callbacks=[budget])
        return program.usage_totals().calls - before

    spent_in_fit = asyncio.run(main())
    assert budget.consumed["calls"] == spent_in_fit > 0


def test_budget_state_survives_a_process_restart(calc_program):
    """A fresh process has fresh LM counters: the restored amount is carried forward.

    The restored callback then drives a real fit, whose limit is only 1 call above what the
    first fit spent: the budget must hold across the restart, stopping the resumed fit after
    its first batch instead of granting a fresh allowance.
    """
    first = BudgetStopping(max_calls=1000)

    async def main() -> Any:
        program = await calc_program()
        await _fit(program, epochs=1, callbacks=[first])
        saved = json.loads(json.dumps(first.state_dict()))
        fresh_program = await calc_program()  # new LM: usage counters at zero
        second = BudgetStopping(max_calls=saved["consumed"]["calls"] + 1)
        second.load_state_dict(saved)  # before the fit attaches the program, as on a resume
        restored = dict(second.consumed)
        log = BatchLog(probe=lambda: dict(second.consumed))
        history = await _fit(fresh_program, epochs=3, callbacks=[second, log])
        spent = fresh_program.usage_totals().calls
        return saved, restored, second, log, history, spent

    saved, restored, second, log, history, spent = asyncio.run(main())
    assert saved["consumed"]["calls"] > 0
    assert restored == saved["consumed"]
    # Counting went on from the restored amount: at the first batch's start, nothing new.
    assert log.begins[0] == saved["consumed"]
    # One batch (2 examples) crossed the 1-call allowance; validation still ran, no more.
    assert [(e, b) for e, b, *_ in log.batches] == [(0, 0)]
    assert second.stopped_reason == "max_calls" and second.stopped_epoch == 0
    assert history.epoch == [0]
    assert second.consumed["calls"] == saved["consumed"]["calls"] + spent


def test_budget_resume_from_backup_keeps_counting_and_stops(calc_program, tmp_path):
    """Crash mid-run, resume from BackupAndRestore: consumption continues from the backup."""
    backup_dir = tmp_path / "backup"
    x, y = arithmetic_data(10)

    class Crash(pf.callbacks.Callback):
        def __init__(self, at_global_step: int) -> None:
            super().__init__()
            self.at = at_global_step

        def on_train_batch_end(self, batch, logs=None):
            if self.program.fit_state.global_step == self.at:
                raise RuntimeError("simulated crash")

    async def run(program: pf.Program, budget: BudgetStopping, log: BatchLog, crash: int) -> None:
        await program.fit(
            x[:8],
            y[:8],
            batch_size=2,
            epochs=2,
            verbose=0,
            seed=1,
            callbacks=[budget, log, Crash(crash), BackupAndRestore(backup_dir, save_freq=1)],
        )

    async def main() -> Any:
        budget = BudgetStopping(max_calls=10_000)
        seen = BatchLog(probe=lambda: dict(budget.consumed))
        with pytest.raises(RuntimeError, match="simulated crash"):
            await run(await calc_program(tag="budget-resume"), budget, seen, crash=3)
        # The backup was written after global step 2 (the crash hit before step 3's save).
        at_backup = seen.batches[1][3]
        after_crash = dict(budget.consumed)

        # "New process": a fresh program and LM (empty cache) on the same model.
        resumed = BudgetStopping(max_calls=at_backup["calls"] + 1)
        resumed_log = BatchLog(probe=lambda: dict(resumed.consumed))
        await run(await calc_program(tag="budget-resume"), resumed, resumed_log, crash=-1)
        return at_backup, after_crash, resumed_log, resumed

    at_backup, after_crash, resumed_log, resumed = asyncio.run(main())
    # The crashed batch's calls were rolled back with the LM counters: not counted.
    assert after_crash["calls"] > at_backup["calls"]
    assert resumed_log.begins[0] == at_backup
    # The small remaining budget was used up by the first resumed batch (epoch 0, batch 2).
    assert [(e, b) for e, b, *_ in resumed_log.batches] == [(0, 2)]
    assert resumed.stopped_reason == "max_calls"
    assert resumed.consumed["calls"] >= at_backup["calls"] + 1


# -- TerminateOnError ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_failed_calls": 0},
        {"max_failed_calls": 1.5},
        {"max_failed_calls": True},
        {"max_failure_rate": 0.0},
        {"max_failure_rate": 1.5},
        {"max_failure_rate": float("nan")},
    ],
)
def test_terminate_on_error_rejects_bad_thresholds(kwargs):
    with pytest.raises(ConfigurationError):
        TerminateOnError(**kwargs)


def test_terminate_on_error_default_stops_when_a_whole_batch_failed(calc_program, capsys):
    terminate = TerminateOnError()
    assert terminate.get_config() == {"max_failed_calls": None, "max_failure_rate": 1.0}
    log = BatchLog()

    async def main() -> Any:
        program = await calc_program(error_rate=1.0, lm_kwargs={"max_retries": 0})
        # fail_fast=False: let TerminateOnError, not the all-calls-failing check, stop it.
        return await _fit(program, epochs=3, callbacks=[terminate, log], fail_fast=False)

    with pytest.warns(RuntimeWarning, match="LM calls of this run"):
        history = asyncio.run(main())
    assert [(e, b) for e, b, *_ in log.batches] == [(0, 0)]
    assert "2 of 2 predictions failed" in terminate.stopped_reason
    assert "terminating training" in capsys.readouterr().out
    # Validation and epoch end still ran for the stopped epoch.
    assert history.epoch == [0]
    assert history.history["val_failed_calls"] == [2]


def test_terminate_on_error_leaves_a_healthy_run_alone(calc_program, capsys):
    terminate = TerminateOnError(max_failed_calls=1, max_failure_rate=0.5)

    async def main() -> Any:
        program = await calc_program()
        return await _fit(program, epochs=2, callbacks=[terminate])

    history = asyncio.run(main())
    assert history.epoch == [0, 1]
    assert terminate.stopped_reason is None
    assert "TerminateOnError" not in capsys.readouterr().out


# With error_rate=0.5 and no retries the first 5 calls all fail in about 1 run of 32 (the failing
# requests depend on the per-process model tag): fail_fast would stop the run before
# TerminateOnError, the thing tested here, so it warns instead and the warning is expected.
@pytest.mark.filterwarnings("ignore:The first .* LM calls of this run all failed")
def test_terminate_on_error_counts_failed_calls_in_the_epoch(calc_program):
    terminate = TerminateOnError(max_failed_calls=3)
    log = BatchLog()

    async def main() -> Any:
        program = await calc_program(error_rate=0.5, lm_kwargs={"max_retries": 0})
        return await _fit(program, n=12, epochs=2, callbacks=[terminate, log], fail_fast=False)

    asyncio.run(main())
    failed = [logs["failed_calls"] for _, _, logs, _ in log.batches]
    assert failed[-1] >= 3 and all(f < 3 for f in failed[:-1])
    assert "max_failed_calls=3" in terminate.stopped_reason


def test_terminate_on_error_rate_is_per_prediction_not_per_request(calc_program):
    """Malformed replies are retried: failed_calls / lm_calls would be 1/2, the real rate 1."""
    terminate = TerminateOnError(max_failure_rate=1.0)
    log = BatchLog()

    async def main() -> Any:
        program = await calc_program(malformed_rate=1.0, lm_kwargs={"max_retries": 1})
        return await _fit(program, epochs=2, callbacks=[terminate, log], fail_fast=False)

    with pytest.warns(RuntimeWarning, match="LM calls of this run"):
        asyncio.run(main())
    (_, _, logs, _) = log.batches[0]
    assert logs["failed_calls"] / logs["lm_calls"] <= 0.5  # the misleading ratio
    assert len(log.batches) == 1 and terminate.stopped_reason is not None


# -- LambdaCallback ------------------------------------------------------------------------------


def test_lambda_callback_rejects_unknown_hooks_and_non_functions():
    with pytest.raises(TypeError, match="on_epoch_end") as info:
        LambdaCallback(on_epoch_finish=print)
    assert "on_epoch_finish" in str(info.value)
    with pytest.raises(ConfigurationError, match="on_epoch_end"):
        LambdaCallback(on_epoch_end="print")


def test_lambda_callback_overrides_every_hook_so_callback_list_dispatches():
    for hook in HOOKS:
        assert getattr(LambdaCallback, hook) is not getattr(pf.callbacks.Callback, hook), hook


def test_lambda_callback_runs_sync_and_async_functions_in_fit_evaluate_predict(calc_program):
    seen: list[tuple[Any, ...]] = []

    async def on_batch_end(batch: int, logs: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        seen.append(("batch_end", batch, logs["reward"]))

    callback = LambdaCallback(
        on_train_begin=lambda logs: seen.append(("train_begin",)),
        on_train_batch_end=on_batch_end,
        on_epoch_end=lambda epoch, logs: seen.append(("epoch_end", epoch, logs["val_reward"])),
        on_test_end=lambda logs: seen.append(("test_end",)),
        on_predict_batch_end=lambda batch, logs: seen.append(("predict", len(logs["outputs"]))),
    )

    async def main() -> None:
        program = await calc_program()
        await _fit(program, n=4, epochs=1, callbacks=[callback])
        seen.append(("-- evaluate",))
        x, y = arithmetic_data(3)
        await program.evaluate(x, y, verbose=0, callbacks=[callback])
        await program.predict(x, verbose=0, callbacks=[callback])

    asyncio.run(main())
    assert seen == [
        ("train_begin",),
        ("batch_end", 0, 1.0),
        ("batch_end", 1, 1.0),
        ("test_end",),  # validation inside fit
        ("epoch_end", 0, 1.0),
        ("-- evaluate",),
        ("test_end",),
        ("predict", 3),
    ]


@pf.saving.register_serializable(package="test_small_callbacks")
def _note_epoch(epoch: int, logs: dict[str, Any]) -> None:
    del epoch, logs


def test_lambda_callback_config_names_registered_functions():
    callback = LambdaCallback(on_epoch_end=_note_epoch)
    config = serialize(callback)
    assert config == {
        "class_name": "LambdaCallback",
        "config": {"on_epoch_end": "test_small_callbacks>_note_epoch"},
    }
    rebuilt = deserialize(json.loads(json.dumps(config)))
    assert rebuilt.functions == {"on_epoch_end": _note_epoch}
    with pytest.raises(SerializationError, match="register_serializable"):
        LambdaCallback(on_epoch_end=lambda epoch, logs: None).get_config()


# -- PredictionLogger ----------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize(
    "kwargs",
    [{"every_n_epochs": 0}, {"num_samples": 0}, {"seed": "x"}, {"filepath": ""}],
)
def test_prediction_logger_rejects_bad_arguments(kwargs, tmp_path):
    arguments = {"filepath": tmp_path / "p.jsonl", **kwargs}
    with pytest.raises(ConfigurationError):
        PredictionLogger(**arguments)


def test_prediction_logger_writes_the_same_validation_samples_every_epoch(calc_program, tmp_path):
    path = tmp_path / "logs" / "predictions.jsonl"
    logger = PredictionLogger(path, num_samples=3, seed=7)
    x, y = arithmetic_data(9)

    async def main() -> None:
        program = await calc_program()
        await program.fit(
            x[:4],
            y[:4],
            batch_size=2,
            epochs=2,
            verbose=0,
            validation_data=(x[4:], y[4:]),
            callbacks=[logger],
        )

    asyncio.run(main())
    records = _read_jsonl(path)
    assert [r["epoch"] for r in records] == [0, 0, 0, 1, 1, 1]
    indices = logger.sample_indices(5)
    assert [r["index"] for r in records] == indices * 2
    for record in records:
        i = record["index"]
        assert set(record) == {
            "epoch",
            "index",
            "split",
            "inputs",
            "prediction",
            "expected",
            "reward",
        }
        assert record["split"] == "validation"
        assert record["inputs"] == x[4 + i]
        assert record["expected"] == y[4 + i]
        assert record["prediction"] == {"answer": y[4 + i]["answer"]}
        assert record["reward"] == 1.0
    assert logger.state_dict() == {"epochs_logged": [0, 1], "lines": 6}


def test_prediction_logger_every_n_epochs_train_fallback_and_failures(calc_program, tmp_path):
    path = tmp_path / "p.jsonl"
    logger = PredictionLogger(path, every_n_epochs=2, num_samples=10)

    async def main() -> None:
        program = await calc_program(error_rate=1.0, lm_kwargs={"max_retries": 0})
        x, y = arithmetic_data(3)
        await program.fit(
            x, y, batch_size=3, epochs=3, verbose=0, callbacks=[logger], fail_fast=False
        )

    with pytest.warns(RuntimeWarning, match="LM calls of this run"):
        asyncio.run(main())
    records = _read_jsonl(path)
    assert [(r["epoch"], r["index"], r["split"]) for r in records] == [
        (1, 0, "train"),
        (1, 1, "train"),
        (1, 2, "train"),
    ]
    assert all(r["prediction"] is None and r["reward"] == 0.0 for r in records)


def test_prediction_logger_appends_and_drops_a_torn_last_line(calc_program, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"epoch": 99, "old": true}\n{"epoch": 5, "tor', encoding="utf-8")
    logger = PredictionLogger(path, num_samples=1)

    async def main() -> None:
        program = await calc_program()
        await _fit(program, n=2, epochs=1, callbacks=[logger])

    asyncio.run(main())
    records = _read_jsonl(path)  # every line parses: the torn one is gone
    assert records[0] == {"epoch": 99, "old": True}
    assert [r["epoch"] for r in records[1:]] == [0]
    assert logger.state_dict()["lines"] == 2


def test_prediction_logger_restore_truncates_what_the_backup_did_not_know(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [{"epoch": e, "index": i} for e in range(3) for i in range(2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    logger = PredictionLogger(path, num_samples=2)
    logger.load_state_dict({"epochs_logged": [0], "lines": 2})
    assert [r["epoch"] for r in _read_jsonl(path)] == [0, 0]
    assert logger.state_dict() == {"epochs_logged": [0], "lines": 2}


def test_prediction_logger_resume_from_backup_logs_each_epoch_once(calc_program, tmp_path):
    """Crash in epoch 1's end after the log was written but before the backup."""
    path = tmp_path / "p.jsonl"
    backup_dir = tmp_path / "backup"
    x, y = arithmetic_data(6)

    class CrashAtEpochEnd(pf.callbacks.Callback):
        def __init__(self, armed: bool) -> None:
            super().__init__()
            self.armed = armed

        def on_epoch_end(self, epoch, logs=None):
            if self.armed and epoch == 1:
                raise RuntimeError("simulated crash")

    async def main() -> None:
        program = await calc_program()
        options = {
            "batch_size": 2,
            "epochs": 3,
            "verbose": 0,
            "seed": 3,
            "validation_data": (x[4:], y[4:]),
        }
        with pytest.raises(RuntimeError):
            await program.fit(
                x[:4],
                y[:4],
                callbacks=[
                    PredictionLogger(path, num_samples=2),
                    CrashAtEpochEnd(armed=True),
                    BackupAndRestore(backup_dir),
                ],
                **options,
            )
        assert [r["epoch"] for r in _read_jsonl(path)] == [0, 0, 1, 1]  # 1 is not backed up
        await program.fit(
            x[:4],
            y[:4],
            callbacks=[
                PredictionLogger(path, num_samples=2),
                CrashAtEpochEnd(armed=False),
                BackupAndRestore(backup_dir),
            ],
            **options,
        )

    asyncio.run(main())
    assert [r["epoch"] for r in _read_jsonl(path)] == [0, 0, 1, 1, 2, 2]


def test_prediction_logger_restore_keeps_lines_of_epochs_the_run_completed(calc_program, tmp_path):
    """Lines written after the backup but for an epoch the restored run finished stay."""
    path = tmp_path / "p.jsonl"
    lines = [{"epoch": e, "index": 0} for e in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")

    async def main() -> PredictionLogger:
        program = await calc_program()
        await _fit(program, n=2, epochs=1)
        logger = PredictionLogger(path, num_samples=1)
        logger.set_program(program)
        # The restored run resumes at epoch 2 (a fit restores its progress before callbacks).
        progress = FitProgress(seed=0, epochs=3, epoch=2, step=0, steps_per_epoch=1, fingerprint={})
        logger.set_context(
            FitContext(program=program, callbacks=CallbackList([logger]), progress=progress)
        )
        logger.load_state_dict({"epochs_logged": [0], "lines": 1})
        return logger

    logger = asyncio.run(main())
    assert [r["epoch"] for r in _read_jsonl(path)] == [0, 1]
    assert logger.epochs_logged == [0, 1]
