"""fit's data handling, seen from outside: which examples train, which validate, in what batches.

Why: these are the promises a user cannot check from the History alone. A validation split
that took the head instead of the tail, a ``validation_batch_size`` that was ignored, or an
``initial_epoch`` that replayed epoch 0's shuffle would all still produce a plausible
``val_reward``. So the tests watch the examples themselves: a reward function records every
target it scores, and a callback tells it which phase of the fit (a training batch or the
validation pass) is running. Everything goes through the public API (``fit``, callbacks,
``FunctionReward``) against the fake LLM server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import promptfit as pf
from promptfit.callbacks.csv_logger import CSVLogger
from tests.conftest import Answer, Query, arithmetic_data


class Watcher(pf.callbacks.Callback):
    """Marks the fit's phases and groups the targets the reward scored by batch.

    ``train[epoch]`` is a list of the answer sets scored in each training batch (the
    optimizer's challengers score the same examples, so they add nothing new to a set);
    ``val`` is one list of per-batch answer lists per validation pass.
    """

    def __init__(self) -> None:
        super().__init__()
        self.phase: str | None = None
        self.epoch = -1
        self.epochs_begun: list[int] = []
        self.train: dict[int, list[set[str]]] = {}
        self.val: list[list[list[str]]] = []

    # The reward function: records the target, scores exact match.
    def reward(self, y_true: dict[str, Any], y_pred: dict[str, Any] | None) -> float:
        answer = str(y_true["answer"])
        if self.phase == "train":
            self.train[self.epoch][-1].add(answer)
        elif self.phase == "val":
            self.val[-1][-1].append(answer)
        return float(y_pred is not None and y_pred.get("answer") == answer)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch = epoch
        self.epochs_begun.append(epoch)
        self.train.setdefault(epoch, [])

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.phase = "train"
        self.train.setdefault(self.epoch, []).append(set())

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.phase = None

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.phase = "val"
        self.val.append([])

    def on_test_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.val[-1].append([])

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        self.phase = None


@pytest.fixture()
def watched_program(
    make_lm: Callable[..., pf.LanguageModel],
) -> Callable[[], Any]:
    """An async factory: (arithmetic program compiled with the watcher's reward, watcher)."""

    async def build() -> tuple[pf.Program, Watcher]:
        watcher = Watcher()
        inputs = pf.Input(data_model=Query)
        outputs = await pf.Generator(
            data_model=Answer,
            language_model=make_lm("arith", tag="fit-loop"),
            instructions="Answer with a number.",
            name="answer",
        )(inputs)
        program = pf.Program(inputs=inputs, outputs=outputs, name="calc")
        program.compile(reward=watcher.reward, optimizer=pf.optimizers.RandomFewShot(k=2))
        return program, watcher

    return build


def _answers(ys: list[dict[str, str]]) -> set[str]:
    return {y["answer"] for y in ys}


def test_validation_split_takes_the_tail_before_shuffling(
    watched_program: Callable[[], Any],
) -> None:
    x, y = arithmetic_data(10)

    async def run() -> tuple[Any, Watcher]:
        program, watcher = await watched_program()
        history = await program.fit(
            x, y, epochs=2, batch_size=4, validation_split=0.2, verbose=0, seed=0,
            callbacks=[watcher],
        )  # fmt: skip
        return history, watcher

    history, watcher = asyncio.run(run())
    assert history.history["val_reward"] == [1.0, 1.0]
    tail, head = _answers(y[8:]), _answers(y[:8])
    for passes in watcher.val:  # one validation pass per epoch: the last 2 examples only
        assert set().union(*map(set, passes)) == tail
    for epoch in (0, 1):  # training sees the first 8, never a validation example
        assert set().union(*watcher.train[epoch]) == head
    assert len(watcher.val) == 2


def test_validation_batch_size_sets_the_validation_batches(
    watched_program: Callable[[], Any],
) -> None:
    x, y = arithmetic_data(15)
    train, val = (x[:8], y[:8]), (x[8:], y[8:])  # 7 validation examples

    async def run(**kwargs: Any) -> Watcher:
        program, watcher = await watched_program()
        await program.fit(
            *train, epochs=1, batch_size=4, validation_data=val, verbose=0, seed=0,
            callbacks=[watcher], **kwargs,
        )  # fmt: skip
        return watcher

    default = asyncio.run(run())
    assert [len(batch) for batch in default.val[0]] == [4, 3]  # batch_size when not given
    own = asyncio.run(run(validation_batch_size=3))
    assert [len(batch) for batch in own.val[0]] == [3, 3, 1]
    assert set().union(*map(set, own.val[0])) == _answers(val[1])
    # Training batches keep batch_size.
    assert [len(batch) for batch in own.train[0]] == [4, 4]


def test_initial_epoch_continues_the_epoch_numbering_and_shuffle(
    watched_program: Callable[[], Any], tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    x, y = arithmetic_data(8)
    log = tmp_path / "log.csv"

    async def run(initial_epoch: int, callbacks: list[Any]) -> tuple[Any, Watcher]:
        program, watcher = await watched_program()
        history = await program.fit(
            x, y, epochs=4, batch_size=3, initial_epoch=initial_epoch, verbose=0, seed=5,
            callbacks=[watcher, *callbacks],
        )  # fmt: skip
        return history, watcher

    full_history, full = asyncio.run(run(0, []))
    assert full.epochs_begun == [0, 1, 2, 3]
    history, late = asyncio.run(run(2, [CSVLogger(log), pf.callbacks.ProgbarLogger(verbose=2)]))
    # Only epochs 2 and 3 run, and they are numbered so everywhere.
    assert late.epochs_begun == [2, 3]
    assert history.epoch == [2, 3]
    assert len(history.history["reward"]) == 2
    assert history.history["reward"] == full_history.history["reward"][2:]
    assert [line.split(",")[0] for line in log.read_text().splitlines()[1:]] == ["2", "3"]
    out = capsys.readouterr().out
    assert [line.split(" - ")[0] for line in out.splitlines()] == ["Epoch 3/4", "Epoch 4/4"]
    # Each epoch's shuffle depends on its number: epoch 2 of the late start sees the batches
    # epoch 2 of the full run saw (and not epoch 0's, which differ for this seed).
    assert full.train[0] != full.train[2]
    assert late.train[2] == full.train[2]
    assert late.train[3] == full.train[3]
