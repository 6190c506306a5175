"""EarlyStopping: exact Keras 3 semantics on synthetic logs, plus real fits on the fake server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest

import promptfit as pf
from promptfit.callbacks.early_stopping import EarlyStopping
from promptfit.errors import ConfigurationError, MonitorKeyError
from tests.conftest import arithmetic_data


@pytest.fixture()
def program(calc_program: Callable[..., Any]) -> pf.Program:
    """A real compiled program (building it makes no LM call)."""
    return asyncio.run(calc_program("arith"))


def mark(program: pf.Program, epoch: int) -> None:
    """Make the variables of each epoch recognisable."""
    variables = program.get_variables()
    variables["answer/prompt"]["instructions"] = f"epoch {epoch}"
    program.set_variables(variables)


def instructions(program: pf.Program) -> str:
    return program.get_variables()["answer/prompt"]["instructions"]


def drive(
    program: pf.Program,
    callback: EarlyStopping,
    values: Sequence[float | None],
    monitor: str = "val_reward",
    start: int = 0,
    begin: bool = True,
) -> list[int]:
    """Run the hooks fit would run for ``values`` (one per epoch); returns the epochs run."""
    callback.set_program(program)
    program.stop_training = False
    if begin:
        callback.on_train_begin({})
    ran = []
    for epoch in range(start, len(values)):
        mark(program, epoch)
        logs: dict[str, Any] = {"reward": 0.0, "lm_calls": 4}
        if values[epoch] is not None:
            logs[monitor] = values[epoch]
        callback.on_epoch_end(epoch, logs)
        ran.append(epoch)
        if program.stop_training:
            break
    callback.on_train_end({})
    return ran


# -- Keras 3 semantics -----------------------------------------------------------------------


def test_patience_zero_stops_at_first_non_improvement(program: pf.Program) -> None:
    es = EarlyStopping(monitor="val_loss")
    assert drive(program, es, [1.0, 0.9, 0.95, 0.5], "val_loss") == [0, 1, 2]
    assert es.stopped_epoch == 2 and es.best == 0.9 and es.best_epoch == 1 and es.wait == 1


def test_patience_counts_epochs_without_improvement(program: pf.Program) -> None:
    es = EarlyStopping(patience=2)
    assert drive(program, es, [0.5, 0.6, 0.6, 0.6, 0.9]) == [0, 1, 2, 3]
    assert es.stopped_epoch == 3 and es.best == 0.6 and es.best_epoch == 1
    # An improvement in between resets the counter.
    es = EarlyStopping(patience=2)
    assert drive(program, es, [0.5, 0.4, 0.6, 0.5, 0.5, 0.9]) == [0, 1, 2, 3, 4]
    assert es.stopped_epoch == 4


def test_min_delta_is_strict_and_absolute(program: pf.Program) -> None:
    # 0.75 - 0.25 == 0.5 is not > 0.5: no improvement, so patience=1 stops at epoch 1.
    es = EarlyStopping(min_delta=-0.25, patience=1)
    assert es.min_delta == 0.25
    assert drive(program, es, [0.5, 0.75, 1.0]) == [0, 1]
    assert es.best == 0.5
    es = EarlyStopping(min_delta=0.25, patience=1)
    assert drive(program, es, [0.5, 0.875, 0.9]) == [0, 1, 2]
    assert es.best == 0.875 and es.stopped_epoch == 2


def test_never_stops_on_epoch_zero(program: pf.Program) -> None:
    # A NaN never improves, so `wait` reaches patience=0 on epoch 0, but Keras never stops
    # on the first epoch.
    es = EarlyStopping(patience=0)
    assert drive(program, es, [float("nan"), 0.5, 0.4]) == [0, 1, 2]
    assert es.stopped_epoch == 2 and es.best == 0.5


def test_baseline_first_epoch_compares_against_baseline(program: pf.Program) -> None:
    # Below the baseline, the first epoch does not reset `wait`, so patience=2 stops one
    # epoch earlier than without a baseline.
    with_baseline = EarlyStopping(patience=2, baseline=0.6)
    assert drive(program, with_baseline, [0.5, 0.5, 0.5, 0.5]) == [0, 1]
    assert with_baseline.best == 0.5 and with_baseline.wait == 2
    without = EarlyStopping(patience=2)
    assert drive(program, without, [0.5, 0.5, 0.5, 0.5]) == [0, 1, 2]
    beaten = EarlyStopping(patience=2, baseline=0.6)
    assert drive(program, beaten, [0.7, 0.7, 0.7, 0.7]) == [0, 1, 2]


def test_baseline_improvements_below_baseline_do_not_reset_wait(program: pf.Program) -> None:
    # Keras 3: an improvement returns before the stop check but keeps counting `wait`
    # until the baseline is beaten; the first non-improving epoch then stops at once.
    es = EarlyStopping(patience=2, baseline=0.9)
    assert drive(program, es, [0.5, 0.55, 0.58, 0.58, 0.58]) == [0, 1, 2, 3]
    assert es.wait == 4 and es.best == 0.58 and es.best_epoch == 2


def test_start_from_epoch_skips_warm_up(program: pf.Program) -> None:
    es = EarlyStopping(patience=0, start_from_epoch=2)
    assert drive(program, es, [0.9, 0.1, 0.5, 0.4]) == [0, 1, 2, 3]
    assert es.best == 0.5 and es.best_epoch == 2 and es.stopped_epoch == 3
    assert drive(program, EarlyStopping(patience=0), [0.9, 0.1, 0.5]) == [0, 1]


def test_restore_best_variables(program: pf.Program, capsys: pytest.CaptureFixture[str]) -> None:
    es = EarlyStopping(patience=2, restore_best_variables=True, verbose=1)
    assert drive(program, es, [0.5, 0.9, 0.6, 0.6, 1.0]) == [0, 1, 2, 3]
    assert instructions(program) == "epoch 1"
    out = capsys.readouterr().out
    assert "Epoch 4: early stopping" in out and "best epoch: 2" in out
    # Without it, the program keeps the last epoch's variables.
    es = EarlyStopping(patience=2)
    drive(program, es, [0.5, 0.9, 0.6, 0.6])
    assert instructions(program) == "epoch 3"
    # Keras restores at train end even when training was not stopped early.
    es = EarlyStopping(patience=10, restore_best_variables=True)
    assert drive(program, es, [0.9, 0.5, 0.4]) == [0, 1, 2]
    assert es.stopped_epoch == 0 and instructions(program) == "epoch 0"


def test_restore_best_variables_without_improvement_uses_first_monitored_epoch(
    program: pf.Program,
) -> None:
    es = EarlyStopping(patience=1, baseline=0.9, restore_best_variables=True, start_from_epoch=1)
    drive(program, es, [1.0, 0.5, 0.4, 0.3])
    assert es.best_epoch == 1 and instructions(program) == "epoch 1"


def test_stop_at_target(program: pf.Program, capsys: pytest.CaptureFixture[str]) -> None:
    es = EarlyStopping(patience=100, stop_at=0.8, verbose=1)
    assert drive(program, es, [0.5, 0.85, 0.9]) == [0, 1]
    assert es.stopped_epoch == 1 and es.best == 0.85
    assert "reached the target 0.8" in capsys.readouterr().out
    # Reached on the very first epoch: stops there.
    assert drive(program, EarlyStopping(patience=5, stop_at=1.0), [1.0, 1.0]) == [0]
    # min mode: <=
    es = EarlyStopping(monitor="val_cost", patience=5, stop_at=0.2)
    assert drive(program, es, [0.5, 0.3, 0.2, 0.1], "val_cost") == [0, 1, 2]


def test_mode_auto_min_and_explicit_mode(program: pf.Program) -> None:
    assert drive(program, EarlyStopping(monitor="val_loss"), [1.0, 1.1], "val_loss") == [0, 1]
    assert drive(program, EarlyStopping(monitor="val_loss"), [1.0, 0.9, 0.8], "val_loss") == [
        0,
        1,
        2,
    ]
    # mode="min" on a reward: going up is "no improvement".
    assert drive(program, EarlyStopping(mode="min"), [0.5, 0.6, 0.7]) == [0, 1]
    assert drive(program, EarlyStopping(monitor="exact", mode="max"), [0.1, 0.2], "exact") == [
        0,
        1,
    ]


def test_auto_mode_error_names_key(program: pf.Program) -> None:
    es = EarlyStopping(monitor="exact")
    es.set_program(program)
    with pytest.raises(ConfigurationError, match=r"'exact'.*mode='max'"):
        es.on_train_begin({})


def test_missing_key_warns_and_strict_raises(program: pf.Program) -> None:
    es = EarlyStopping(patience=0)
    with pytest.warns(UserWarning, match=r"Available keys: \['lm_calls', 'reward'\]") as rec:
        assert drive(program, es, [None, None, None]) == [0, 1, 2]
    assert len(rec) == 1
    with pytest.raises(MonitorKeyError, match="val_reward"):
        drive(program, EarlyStopping(strict=True), [None])


def test_instance_is_reset_between_runs(program: pf.Program) -> None:
    es = EarlyStopping(patience=0)
    drive(program, es, [0.9, 0.1])
    assert es.stopped_epoch == 1
    assert drive(program, es, [0.1, 0.2, 0.3]) == [0, 1, 2]
    assert es.best == 0.3 and es.stopped_epoch == 0


def test_state_dict_resumes_exactly(program: pf.Program) -> None:
    values = [0.5, 0.7, 0.6, 0.65, 0.6, 0.9]
    whole = EarlyStopping(patience=3, restore_best_variables=True)
    whole_epochs = drive(program, whole, values)
    whole_vars = program.get_variables()

    first = EarlyStopping(patience=3, restore_best_variables=True)
    first.set_program(program)
    first.on_train_begin({})
    for epoch in range(3):
        mark(program, epoch)
        first.on_epoch_end(epoch, {"val_reward": values[epoch]})
    state = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    assert state["wait"] == 1 and state["best"] == 0.7 and state["best_epoch"] == 1
    assert state["best_variables"]["answer/prompt"]["instructions"] == "epoch 1"

    resumed = EarlyStopping(patience=3, restore_best_variables=True)
    resumed.load_state_dict(state)
    # BackupAndRestore may load the state before on_train_begin runs: it must survive.
    rest = drive(program, resumed, values, start=3)
    assert [0, 1, 2, *rest] == whole_epochs
    assert resumed.stopped_epoch == whole.stopped_epoch == 4
    assert resumed.best == whole.best and resumed.wait == whole.wait
    assert program.get_variables() == whole_vars


def test_state_dict_before_any_epoch_is_json() -> None:
    state = EarlyStopping().state_dict()
    assert json.loads(json.dumps(state, allow_nan=False)) == {
        "wait": 0,
        "best": None,
        "best_epoch": 0,
        "stopped_epoch": 0,
        "best_variables": None,
    }


def test_get_config_round_trip() -> None:
    es = EarlyStopping(
        monitor="val_accuracy",
        min_delta=-0.01,
        patience=3,
        verbose=1,
        mode="max",
        baseline=0.5,
        restore_best_variables=True,
        start_from_epoch=2,
        stop_at=0.99,
        strict=True,
    )
    config = json.loads(json.dumps(es.get_config()))
    assert config["min_delta"] == 0.01
    rebuilt = EarlyStopping.from_config(config)
    assert isinstance(rebuilt, EarlyStopping) and rebuilt.get_config() == config
    assert EarlyStopping.from_config(EarlyStopping().get_config()).get_config() == (
        EarlyStopping().get_config()
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"patience": -1},
        {"patience": 1.5},
        {"start_from_epoch": "2"},
        {"baseline": float("nan")},
        {"stop_at": "1.0"},
        {"mode": "maximise"},
        {"monitor": ""},
        {"min_delta": None},
    ],
)
def test_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        EarlyStopping(**kwargs)


# -- real fits on the fake server ----------------------------------------------------------


def test_real_fit_stops_and_restores(calc_program: Callable[..., Any]) -> None:
    """min_examples=2: the reward goes 0.5 -> 1.0 once RandomFewShot found 2 examples."""

    async def run() -> tuple[Any, EarlyStopping, pf.Program, dict[str, Any]]:
        program = await calc_program("arith", min_examples=2)
        x, y = arithmetic_data(8)
        es = EarlyStopping(monitor="reward", patience=1, restore_best_variables=True)
        snapshots: dict[int, Any] = {}

        class Snapshot(pf.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                snapshots[epoch] = self.program.get_variables()

        history = await program.fit(
            x, y, epochs=6, batch_size=4, verbose=0, seed=1, callbacks=[Snapshot(), es]
        )
        return history, es, program, snapshots

    history, es, program, snapshots = asyncio.run(run())
    rewards = history.history["reward"]
    assert rewards[0] < 1.0 and rewards[1] == 1.0
    assert len(history.epoch) == 3  # no improvement at epoch 2, patience 1 -> stop
    assert es.stopped_epoch == 2 and es.best == 1.0 and es.best_epoch == 1
    assert program.get_variables() == snapshots[1]
    assert len(program.get_variables()["answer/prompt"]["examples"]) >= 2


def test_real_fit_stop_at(calc_program: Callable[..., Any]) -> None:
    async def run() -> Any:
        program = await calc_program("arith", min_examples=2)
        x, y = arithmetic_data(8)
        es = EarlyStopping(monitor="reward", patience=10, stop_at=1.0)
        return await program.fit(x, y, epochs=6, batch_size=4, verbose=0, seed=1, callbacks=[es])

    history = asyncio.run(run())
    assert history.history["reward"][-1] == 1.0
    assert len(history.epoch) == 2
