"""MetricWatcher: mode inference, Keras 3 improvement rule, missing keys (warning / strict)."""

from __future__ import annotations

import asyncio
import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest

import promptfit as pf
from promptfit.callbacks._monitoring import MetricWatcher, infer_mode
from promptfit.callbacks.early_stopping import EarlyStopping
from promptfit.callbacks.program_checkpoint import ProgramCheckpoint
from promptfit.errors import ConfigurationError, MonitorKeyError
from tests.conftest import arithmetic_data


@pytest.mark.parametrize(
    "key",
    [
        "reward",
        "val_reward",
        "accuracy",
        "val_accuracy",
        "f1_score",
        "val_binary_f1_score",
        "precision",
        "recall",
        "auc",
        "judge_score",
        "top_acc",
    ],
)
def test_auto_mode_max_keys(key: str) -> None:
    monitor = MetricWatcher(key)
    assert monitor.resolve() == "max"
    assert monitor.mode == "max"
    assert monitor.initial_best() == -math.inf


@pytest.mark.parametrize(
    "key",
    [
        "loss",
        "val_loss",
        "cost",
        "val_cost",
        "tokens",
        "lm_calls",
        "failed_calls",
        "val_failed_calls",
        "latency_ms",
        "error_rate",
    ],
)
def test_auto_mode_min_keys(key: str) -> None:
    monitor = MetricWatcher(key)
    assert monitor.resolve() == "min"
    assert monitor.initial_best() == math.inf


@pytest.mark.parametrize("key", ["exact_match", "val_custom", "recalls", "accuracy_loss"])
def test_auto_mode_unknown_or_ambiguous_key_raises_naming_it(key: str) -> None:
    assert infer_mode(key) is None
    monitor = MetricWatcher(key, owner="EarlyStopping")
    with pytest.raises(ConfigurationError) as info:
        monitor.resolve()
    message = str(info.value)
    assert repr(key) in message and "mode='max'" in message and "mode='min'" in message
    # An explicit mode needs no inference.
    assert MetricWatcher(key, mode="min").resolve() == "min"


@pytest.mark.parametrize("mode", ["maximize", "MAX", "", None])
def test_bad_mode_fails_at_construction(mode: Any) -> None:
    with pytest.raises(ConfigurationError, match="mode"):
        MetricWatcher("val_reward", mode=mode)


@pytest.mark.parametrize("monitor", ["", None, 3])
def test_bad_monitor_fails_at_construction(monitor: Any) -> None:
    with pytest.raises(ConfigurationError, match="monitor"):
        MetricWatcher(monitor)


def test_bad_min_delta() -> None:
    with pytest.raises(ConfigurationError, match="min_delta"):
        MetricWatcher("reward", min_delta=float("nan"))
    with pytest.raises(ConfigurationError, match="min_delta"):
        MetricWatcher("reward", min_delta="0.1")  # type: ignore[arg-type]


def test_improved_follows_keras3_with_min_delta() -> None:
    up = MetricWatcher("val_reward", mode="max", min_delta=-0.25)  # stored as abs
    assert up.min_delta == 0.25
    assert up.improved(0.8, 0.5)
    assert not up.improved(0.75, 0.5)  # 0.75 - 0.25 == 0.5 is not > 0.5
    assert not up.improved(0.4, 0.5)
    down = MetricWatcher("val_loss", mode="auto", min_delta=0.25)
    down.resolve()
    assert down.improved(0.2, 0.5)
    assert not down.improved(0.25, 0.5)  # 0.25 + 0.25 == 0.5 is not < 0.5
    assert not down.improved(0.9, 0.5)
    plain = MetricWatcher("val_reward")
    assert not plain.improved(0.5, 0.5)  # strict, even with min_delta=0
    # Nothing seen yet: any real value improves; NaN never does.
    assert plain.improved(-1e9, None)
    assert not plain.improved(float("nan"), None)
    assert plain.improved(0.1, plain.initial_best())


def test_reached() -> None:
    assert MetricWatcher("reward").reached(1.0, 1.0)
    assert not MetricWatcher("reward").reached(0.9, 1.0)
    assert MetricWatcher("cost").reached(0.1, 0.2)
    assert not MetricWatcher("cost").reached(0.3, 0.2)


def test_missing_key_warns_once_with_sorted_keys() -> None:
    monitor = MetricWatcher("val_reward", owner="EarlyStopping")
    monitor.resolve()
    logs = {"tokens": 3, "reward": 0.5, "accuracy": 1.0}
    with pytest.warns(UserWarning) as record:
        assert monitor.get(logs) is None
    assert len(record) == 1
    message = str(record[0].message)
    assert "EarlyStopping" in message and "'val_reward'" in message
    assert "['accuracy', 'reward', 'tokens']" in message
    assert "validation_data" in message  # the fix for a val_ key
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert monitor.get(logs) is None  # no second warning in the same run
    monitor.resolve()  # a new run re-arms the warning
    with pytest.warns(UserWarning):
        monitor.get({})


def test_missing_key_strict_raises_same_text() -> None:
    monitor = MetricWatcher("val_reward", strict=True, owner="ProgramCheckpoint")
    with pytest.raises(MonitorKeyError) as info:
        monitor.get({"reward": 1.0, "cost": 0.0})
    assert isinstance(info.value, KeyError)
    assert str(info.value) == monitor.missing_message({"reward": 1.0, "cost": 0.0})
    assert "['cost', 'reward']" in str(info.value)


def test_get_converts_and_rejects_non_numbers() -> None:
    monitor = MetricWatcher("reward")
    assert monitor.get({"reward": 1}) == 1.0 and isinstance(monitor.get({"reward": 1}), float)
    with pytest.raises(ConfigurationError, match="not a number"):
        monitor.get({"reward": "high"})


def test_real_fit_unknown_auto_key_fails_before_any_lm_call(
    calc_program: Callable[..., Any],
) -> None:
    async def run() -> pf.Program:
        program = await calc_program("arith", min_examples=2)
        x, y = arithmetic_data(4)
        with pytest.raises(ConfigurationError, match="exact_match"):
            await program.fit(
                x, y, epochs=2, verbose=0, seed=0, callbacks=[EarlyStopping(monitor="exact_match")]
            )
        with pytest.raises(ConfigurationError, match="exact_match"):
            await program.fit(
                x,
                y,
                epochs=2,
                verbose=0,
                seed=0,
                callbacks=[ProgramCheckpoint("/nonexistent/ckpt.json", monitor="exact_match")],
            )
        return program

    program = asyncio.run(run())
    assert program.usage_totals().calls == 0


def test_real_fit_missing_key_warns_and_strict_raises(calc_program: Callable[..., Any]) -> None:
    async def run() -> None:
        program = await calc_program("arith")
        x, y = arithmetic_data(4)
        with pytest.warns(UserWarning, match="Available keys") as record:
            history = await program.fit(
                x, y, epochs=2, verbose=0, seed=0, callbacks=[EarlyStopping(patience=0)]
            )
        # Not a silent no-op, but not a flood either: one warning for the run.
        assert sum("val_reward" in str(r.message) for r in record) == 1
        assert len(history.epoch) == 2  # nothing monitored, so nothing stopped
        with pytest.raises(MonitorKeyError, match="val_reward"):
            await program.fit(
                x, y, epochs=2, verbose=0, seed=0, callbacks=[EarlyStopping(strict=True)]
            )

    asyncio.run(run())
