"""fit: optimizers really improve, runs are reproducible, arguments are checked.

Which examples train and validate (``validation_split``, ``validation_batch_size``,
``initial_epoch``) is tested in ``test_fit_loop.py``; InstructionOptimizer in
``test_instruction_optimizer.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import promptfit as pf
from promptfit.errors import ConfigurationError, DataError
from tests.conftest import arithmetic_data


def test_random_few_shot_improves_reward(calc_program: Callable[..., Any]) -> None:
    async def run() -> tuple[dict[str, float], Any, dict[str, float], pf.Program]:
        program = await calc_program("arith", min_examples=2)
        x, y = arithmetic_data(30)
        val = arithmetic_data(10, offset=100)
        before = await program.evaluate(*val, verbose=0)
        history = await program.fit(
            x, y, epochs=2, batch_size=10, validation_data=val, verbose=0, seed=3
        )
        after = await program.evaluate(*val, verbose=0)
        return before, history, after, program

    before, history, after, program = asyncio.run(run())
    assert before["reward"] == 0.0
    assert after["reward"] == 1.0
    assert history.history["val_reward"][-1] == 1.0
    assert len(program.get_variables()["answer/prompt"]["examples"]) == 2
    assert program.optimizer.moves >= 1
    for key in ("reward", "accuracy", "lm_calls", "tokens", "cost", "failed_calls", "val_reward"):
        assert key in history.history
    assert history.epoch == [0, 1]
    frame = history.to_dataframe()
    assert list(frame.index) == [0, 1]


def test_same_seed_same_run(calc_program: Callable[..., Any]) -> None:
    async def run() -> tuple[dict[str, list[Any]], dict[str, Any]]:
        program = await calc_program("arith", min_examples=2)
        x, y = arithmetic_data(20)
        history = await program.fit(x, y, epochs=2, batch_size=5, verbose=0, seed=11)
        return history.history, program.get_variables()

    first_history, first_vars = asyncio.run(run())
    second_history, second_vars = asyncio.run(run())
    assert first_vars == second_vars
    assert first_history["reward"] == second_history["reward"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"epochs": 0}, ConfigurationError, "epochs"),
        ({"batch_size": 0}, ConfigurationError, "batch_size"),
        ({"validation_split": 1.5}, ConfigurationError, "validation_split"),
        ({"initial_epoch": 3, "epochs": 2}, ConfigurationError, "initial_epoch"),
        ({"validation_data": ([1],)}, DataError, "validation_data"),
    ],
)
def test_fit_arguments_are_checked(
    calc_program: Callable[..., Any], kwargs: dict[str, Any], error: type, match: str
) -> None:
    async def run() -> None:
        program = await calc_program("arith")
        x, y = arithmetic_data(4)
        await program.fit(x, y, verbose=0, **kwargs)

    with pytest.raises(error, match=match):
        asyncio.run(run())


def test_fit_needs_an_optimizer(make_lm: Callable[..., pf.LanguageModel]) -> None:
    from tests.conftest import Answer, Query

    program = pf.Sequential(
        [pf.Input(data_model=Query), pf.Generator(data_model=Answer, language_model=make_lm())]
    )
    program.compile(reward=pf.rewards.ExactMatch())
    with pytest.raises(ConfigurationError, match="optimizer"):
        asyncio.run(program.fit(*arithmetic_data(2), verbose=0))


def test_optimizer_state_round_trips(calc_program: Callable[..., Any]) -> None:
    async def run() -> pf.optimizers.RandomFewShot:
        program = await calc_program("arith", min_examples=2)
        await program.fit(*arithmetic_data(10), epochs=1, batch_size=5, verbose=0, seed=1)
        return program.optimizer

    optimizer = asyncio.run(run())
    state = optimizer.state_dict()
    clone = pf.optimizers.RandomFewShot(k=2)
    clone.load_state_dict(state)
    assert clone.state_dict() == state
    assert clone.rng.random() == optimizer.rng.random()
