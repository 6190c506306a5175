"""Rewards are checked (issue 11, item 9): typed errors naming the reward and the example."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import promptfit as pf
from promptfit.errors import ConfigurationError, RewardError
from tests.conftest import arithmetic_data


def _run(calc_program: Callable[..., Any], reward: Any, batch_size: int, **compile_kw: Any) -> Any:
    async def go() -> Any:
        program = await calc_program()
        program.compile(reward=reward, optimizer=pf.optimizers.RandomFewShot(k=1), **compile_kw)
        x, y = arithmetic_data(3)
        return await program.fit(x, y, epochs=1, batch_size=batch_size, verbose=0, seed=0)

    return asyncio.run(go())


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize(
    ("value", "match"),
    [
        (5, "returned 5.0"),
        (-3, "returned -3.0"),
        (float("inf"), "returned inf"),
        (None, "returned None"),
        ("0.5", "returned '0.5'"),
        ([1], r"returned \[1\]"),
    ],
    ids=["5", "-3", "inf", "None", "string", "list"],
)
def test_bad_reward_values_are_typed_errors(
    calc_program: Callable[..., Any], value: Any, match: str, batch_size: int
) -> None:
    def bad(y_true: dict[str, Any], y_pred: dict[str, Any]) -> Any:
        return value

    with pytest.raises(RewardError, match=match) as caught:
        _run(calc_program, bad, batch_size)
    assert "FunctionReward('bad')" in str(caught.value)
    assert "for the example {'question': 'What is" in str(caught.value)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_raising_reward_is_a_reward_error_not_an_exception_group(
    calc_program: Callable[..., Any], batch_size: int
) -> None:
    def boom(y_true: dict[str, Any], y_pred: dict[str, Any]) -> float:
        raise KeyError("label")

    with pytest.raises(RewardError, match="raised KeyError") as caught:
        _run(calc_program, boom, batch_size)
    assert not isinstance(caught.value, BaseExceptionGroup)
    assert "reward_errors='record'" in str(caught.value)


def test_reward_errors_record_scores_zero_and_warns_once(
    calc_program: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    def sometimes(y_true: dict[str, Any], y_pred: dict[str, Any]) -> float:
        if y_true["answer"] == "1":
            raise ValueError("cannot score")
        return 1.0

    history = _run(calc_program, sometimes, 3, reward_errors="record")
    assert history.history["reward"] == [pytest.approx(2 / 3)]
    assert sum("cannot score" in r.getMessage() for r in caplog.records) == 1


def test_valid_rewards_still_work(calc_program: Callable[..., Any]) -> None:
    history = _run(calc_program, lambda t, p: t == p, 3)  # booleans count as 1/0
    assert history.history["reward"] == [1.0]
    with pytest.raises(ConfigurationError, match="reward_errors"):
        _run(calc_program, lambda t, p: 1.0, 3, reward_errors="ignore")
