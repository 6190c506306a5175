"""The order and semantics of callback hooks in ``fit``, ``evaluate`` and ``predict``.

Why: every callback (checkpoints, early stopping, backups, loggers) relies on Keras' hook
sequence -- validation before ``on_epoch_end``, ``stop_training`` taking effect after the
current batch, ``on_train_end`` running even when training fails. These tests run real fits
against the fake LLM server and record the hooks as they fire.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
from conftest import arithmetic_data

import promptfit as pf
from promptfit.callbacks.callback import HOOKS


class Recorder(pf.callbacks.Callback):
    """Records every hook; half of them are async and yield before recording."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, ...]] = []
        self.logs: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.error: BaseException | None = None

    def _record(self, *key: Any, logs: dict[str, Any] | None = None) -> None:
        self.calls.append(key)
        self.logs[key] = dict(logs or {})

    def on_train_begin(self, logs=None):
        self._record("train_begin", logs=logs)

    async def on_train_end(self, logs=None):
        await anyio.sleep(0)
        self._record("train_end", logs=logs)

    async def on_epoch_begin(self, epoch, logs=None):
        await anyio.sleep(0)
        self._record("epoch_begin", epoch, logs=logs)

    async def on_epoch_end(self, epoch, logs=None):
        await anyio.sleep(0.001)
        self._record("epoch_end", epoch, logs=logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._record("batch_begin", batch, logs=logs)

    async def on_train_batch_end(self, batch, logs=None):
        await anyio.sleep(0)
        self._record("batch_end", batch, logs=logs)

    def on_test_begin(self, logs=None):
        self._record("test_begin", logs=logs)

    async def on_test_end(self, logs=None):
        await anyio.sleep(0)
        self._record("test_end", logs=logs)

    def on_test_batch_begin(self, batch, logs=None):
        self._record("test_batch_begin", batch, logs=logs)

    def on_test_batch_end(self, batch, logs=None):
        self._record("test_batch_end", batch, logs=logs)

    async def on_predict_begin(self, logs=None):
        await anyio.sleep(0)
        self._record("predict_begin", logs=logs)

    def on_predict_end(self, logs=None):
        self._record("predict_end", logs=logs)

    def on_predict_batch_begin(self, batch, logs=None):
        self._record("predict_batch_begin", batch, logs=logs)

    async def on_predict_batch_end(self, batch, logs=None):
        await anyio.sleep(0)
        self._record("predict_batch_end", batch, logs=logs)

    async def on_train_error(self, error):
        await anyio.sleep(0)
        self.error = error
        self._record("train_error", type(error).__name__)


def _epoch(epoch: int, batches: int, val_batches: int) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = [("epoch_begin", epoch)]
    for b in range(batches):
        calls += [("batch_begin", b), ("batch_end", b)]
    if val_batches:
        calls.append(("test_begin",))
        for b in range(val_batches):
            calls += [("test_batch_begin", b), ("test_batch_end", b)]
        calls.append(("test_end",))
    return [*calls, ("epoch_end", epoch)]


def test_fit_calls_hooks_in_keras_order_and_awaits_async_hooks(calc_program):
    """5 examples / batch 2 -> 3 batches; validation (2 examples) runs before epoch end."""
    x, y = arithmetic_data(7)
    recorder = Recorder()

    async def main() -> Any:
        program = await calc_program()
        return await program.fit(
            x[:5],
            y[:5],
            batch_size=2,
            epochs=2,
            verbose=0,
            validation_data=(x[5:], y[5:]),
            callbacks=[recorder],
            seed=0,
        )

    history = asyncio.run(main())
    expected = [("train_begin",), *_epoch(0, 3, 1), *_epoch(1, 3, 1), ("train_end",)]
    assert recorder.calls == expected
    # Logs carry real values: batch logs the running reward, epoch end adds validation.
    assert recorder.logs[("batch_end", 2)]["reward"] == pytest.approx(1.0)
    epoch_logs = recorder.logs[("epoch_end", 1)]
    assert {"reward", "val_reward", "lm_calls", "val_lm_calls", "failed_calls"} <= set(epoch_logs)
    assert recorder.logs[("test_end",)]["reward"] == epoch_logs["val_reward"]
    assert recorder.logs[("train_end",)] == epoch_logs
    assert history.epoch == [0, 1]


def test_stop_training_finishes_batch_then_validates_and_ends_epoch(calc_program):
    x, y = arithmetic_data(7)
    recorder = Recorder()

    class StopAfterFirstBatch(pf.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                self.program.stop_training = True

    async def main() -> Any:
        program = await calc_program()
        history = await program.fit(
            x[:5],
            y[:5],
            batch_size=2,
            epochs=3,
            verbose=0,
            validation_data=(x[5:], y[5:]),
            callbacks=[StopAfterFirstBatch(), recorder],
        )
        return program, history

    program, history = asyncio.run(main())
    assert recorder.calls == [
        ("train_begin",),
        ("epoch_begin", 0),
        ("batch_begin", 0),
        ("batch_end", 0),  # later callbacks still see the batch that asked to stop
        ("test_begin",),
        ("test_batch_begin", 0),
        ("test_batch_end", 0),
        ("test_end",),
        ("epoch_end", 0),
        ("train_end",),
    ]
    assert program.stop_training is True
    assert history.epoch == [0]
    assert history.history["val_reward"] == [pytest.approx(1.0)]


def test_train_end_runs_after_train_error_when_fit_fails(calc_program):
    x, y = arithmetic_data(6)
    recorder = Recorder()

    class Boom(pf.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                raise RuntimeError("boom at batch 1")

    async def main() -> None:
        program = await calc_program()
        await program.fit(
            x, y, batch_size=2, epochs=2, verbose=0, callbacks=[recorder, Boom()], shuffle=False
        )

    with pytest.raises(RuntimeError, match="boom at batch 1"):
        asyncio.run(main())
    assert recorder.calls == [
        ("train_begin",),
        ("epoch_begin", 0),
        ("batch_begin", 0),
        ("batch_end", 0),
        ("batch_begin", 1),
        ("batch_end", 1),
        ("train_error", "RuntimeError"),
        ("train_end",),
    ]
    assert str(recorder.error) == "boom at batch 1"


def test_train_end_runs_even_when_train_error_hook_fails(calc_program):
    x, y = arithmetic_data(4)
    ended: list[str] = []

    class FailingErrorHook(pf.callbacks.Callback):
        def on_train_begin(self, logs=None):
            raise ValueError("bad start")

        def on_train_error(self, error):
            raise KeyError("error hook broke too")

        def on_train_end(self, logs=None):
            ended.append("train_end")

    async def main() -> None:
        program = await calc_program()
        await program.fit(x, y, batch_size=2, verbose=0, callbacks=[FailingErrorHook()])

    with pytest.raises(KeyError):
        asyncio.run(main())
    assert ended == ["train_end"]


def test_evaluate_calls_only_test_hooks(calc_program):
    x, y = arithmetic_data(5)
    recorder = Recorder()

    async def main() -> dict[str, float]:
        program = await calc_program()
        return await program.evaluate(x, y, batch_size=2, verbose=0, callbacks=[recorder])

    logs = asyncio.run(main())
    assert recorder.calls == [
        ("test_begin",),
        ("test_batch_begin", 0),
        ("test_batch_end", 0),
        ("test_batch_begin", 1),
        ("test_batch_end", 1),
        ("test_batch_begin", 2),
        ("test_batch_end", 2),
        ("test_end",),
    ]
    assert recorder.logs[("test_end",)] == logs
    assert logs["reward"] == pytest.approx(1.0)
    assert logs["lm_calls"] == 5


def test_predict_calls_only_predict_hooks_with_outputs(calc_program):
    x, _ = arithmetic_data(3)
    recorder = Recorder()

    async def main() -> list[Any]:
        program = await calc_program()
        return await program.predict(x, batch_size=2, verbose=0, callbacks=[recorder])

    outputs = asyncio.run(main())
    assert recorder.calls == [
        ("predict_begin",),
        ("predict_batch_begin", 0),
        ("predict_batch_end", 0),
        ("predict_batch_begin", 1),
        ("predict_batch_end", 1),
        ("predict_end",),
    ]
    batch_outputs = [
        *recorder.logs[("predict_batch_end", 0)]["outputs"],
        *recorder.logs[("predict_batch_end", 1)]["outputs"],
    ]
    assert batch_outputs == outputs
    assert [o.answer for o in outputs] == ["1", "4", "7"]


def test_callback_list_calls_only_overridden_hooks():
    class OnlyEpochEnd(pf.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            pass

    callbacks = pf.callbacks.CallbackList([OnlyEpochEnd(), Recorder()])
    overriding = {hook: len(handlers) for hook, handlers in callbacks._handlers.items()}
    assert overriding["on_epoch_end"] == 2
    assert overriding["on_train_begin"] == 1  # Recorder only
    assert set(overriding) == set(HOOKS)
