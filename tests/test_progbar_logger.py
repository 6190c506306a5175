"""ProgbarLogger: what a person watching ``fit``/``evaluate``/``predict`` actually sees.

Why: the progress output is the one view of a run most users have. The lines are captured
from real fits on the fake LLM server and checked: one bar per epoch with a batch count and
the shown logs (``verbose=1``, on stderr through tqdm), one line per epoch with every log
(``verbose=2``, on stdout), a bar for ``evaluate`` and ``predict``, and nothing at
``verbose=0``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import arithmetic_data


def _bar_lines(err: str) -> list[str]:
    """tqdm's final state of every bar: the last carriage-return segment of each line."""
    lines = [line.split("\r")[-1].strip() for line in err.split("\n")]
    return [line for line in lines if line]


def test_verbose_2_prints_one_line_per_epoch_with_every_log(
    calc_program: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    async def run() -> Any:
        program = await calc_program("arith")
        x, y = arithmetic_data(8)
        return await program.fit(
            x[:6], y[:6], epochs=2, batch_size=3, validation_data=(x[6:], y[6:]), verbose=2,
            seed=0,
        )  # fmt: skip

    history = asyncio.run(run())
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2, lines
    for epoch, line in enumerate(lines):
        head, *parts = line.split(" - ")
        assert head == f"Epoch {epoch + 1}/2"
        shown = dict(part.split(": ", 1) for part in parts)
        assert set(shown) == set(history.history)  # every log key, validation included
        assert float(shown["reward"]) == history.history["reward"][epoch]
        assert float(shown["val_reward"]) == history.history["val_reward"][epoch]
        assert int(shown["lm_calls"]) == history.history["lm_calls"][epoch]
    assert "Epoch" not in captured.err  # no bar at verbose=2


def test_verbose_1_draws_a_bar_per_epoch_with_batches_and_logs(
    calc_program: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    async def run() -> Any:
        program = await calc_program("arith")
        return await program.fit(*arithmetic_data(6), epochs=2, batch_size=2, verbose=1, seed=0)

    asyncio.run(run())
    captured = capsys.readouterr()
    assert captured.out == ""
    bars = [line for line in _bar_lines(captured.err) if line.startswith("Epoch")]
    assert len(bars) == 2, captured.err
    for epoch, bar in enumerate(bars):
        assert bar.startswith(f"Epoch {epoch + 1}/2: 100%")
        assert re.search(r"\b3/3 \[", bar), bar  # 3 batches of 2, all done
        assert "reward=1" in bar and "lm_calls=" in bar and "failed_calls=0" in bar


def test_evaluate_and_predict_bars_and_silence_at_verbose_0(
    calc_program: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    async def run() -> None:
        program = await calc_program("arith")
        x, y = arithmetic_data(5)
        await program.evaluate(x, y, batch_size=2, verbose=1)
        await program.predict(x, batch_size=2, verbose=1)
        await program.fit(x, y, epochs=1, batch_size=2, verbose=0, seed=0)
        await program.evaluate(x, y, verbose=0)

    asyncio.run(run())
    captured = capsys.readouterr()
    bars = _bar_lines(captured.err)
    assert len(bars) == 2, captured.err
    assert bars[0].startswith("Evaluate: 100%") and "3/3" in bars[0] and "reward=1" in bars[0]
    assert bars[1].startswith("Predict: 100%") and "3/3" in bars[1]
    assert captured.out == ""


def test_verbose_auto_is_one_line_per_epoch_without_a_terminal(
    calc_program: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    async def run() -> None:
        program = await calc_program("arith")
        await program.fit(*arithmetic_data(4), epochs=1, batch_size=2, seed=0)  # "auto"

    asyncio.run(run())
    captured = capsys.readouterr()  # pytest's capture is not a terminal
    assert captured.out.startswith("Epoch 1/1 - ")
    assert "%" not in captured.err
