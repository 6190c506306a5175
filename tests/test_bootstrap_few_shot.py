"""BootstrapFewShot on the real test server: every step gets demonstrations, teachers work."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import promptfit as pf
from promptfit.errors import ConfigurationError
from tests.conftest import Answer, Query, arithmetic_data


async def two_step(make_lm: Callable[..., pf.LanguageModel], **answer_options: Any) -> pf.Program:
    """Query -> "rewrite" (echo: copies the question) -> Query -> "answer" (arith) -> Answer."""
    inputs = pf.Input(data_model=Query)
    rewritten = await pf.Generator(
        data_model=Query, language_model=make_lm("echo"), name="rewrite"
    )(inputs)
    outputs = await pf.Generator(
        data_model=Answer,
        language_model=make_lm("arith", **answer_options),
        instructions="Answer with a number.",
        name="answer",
    )(rewritten)
    return pf.Program(inputs=inputs, outputs=outputs, name="two_step")


def test_teacher_program_gives_demonstrations_to_every_step(
    make_lm: Callable[..., pf.LanguageModel],
) -> None:
    """The student's last step needs 2 examples; the teacher (same program, no gate) does not.

    Only the final output is labelled, yet the intermediate ``rewrite`` step gets
    demonstrations taken from the teacher's successful whole-program runs.
    """

    async def run() -> tuple[pf.Program, pf.optimizers.BootstrapFewShot, dict[str, float]]:
        teacher = await two_step(make_lm)
        student = await two_step(make_lm, min_examples=2)
        optimizer = pf.optimizers.BootstrapFewShot(
            max_bootstrapped_demos=2, max_labeled_demos=0, teacher=teacher, num_candidates=2
        )
        student.compile(reward=pf.rewards.ExactMatch(in_mask=["answer"]), optimizer=optimizer)
        val = arithmetic_data(6, offset=200)
        before = await student.evaluate(*val, verbose=0)
        await student.fit(
            *arithmetic_data(24), epochs=2, batch_size=6, validation_data=val, verbose=0, seed=4
        )
        after = await student.evaluate(*val, verbose=0)
        assert before["reward"] == 0.0
        return student, optimizer, after

    student, optimizer, after = asyncio.run(run())
    assert set(optimizer.bootstrapped) == {"rewrite", "answer"}
    variables = student.get_variables()
    assert len(variables["rewrite/prompt"]["examples"]) >= 1
    assert len(variables["answer/prompt"]["examples"]) >= 2
    assert after["reward"] == 1.0
    assert optimizer.moves >= 1


def test_labels_break_the_cold_start_without_a_teacher(
    calc_program: Callable[..., Any],
) -> None:
    """No prediction is right at first: the labelled pairs are the first demonstrations."""

    async def run() -> tuple[pf.Program, pf.optimizers.BootstrapFewShot]:
        optimizer = pf.optimizers.BootstrapFewShot(max_bootstrapped_demos=2, max_labeled_demos=2)
        program = await calc_program("arith", min_examples=2, optimizer=optimizer)
        await program.fit(*arithmetic_data(16), epochs=2, batch_size=8, verbose=0, seed=1)
        return program, optimizer

    program, optimizer = asyncio.run(run())
    assert len(optimizer.labeled["answer"]) == 16
    assert optimizer.bootstrapped.get("answer")  # once right, its own runs are harvested
    assert len(program.get_variables()["answer/prompt"]["examples"]) == 2


def test_teacher_language_model_and_budget(
    calc_program: Callable[..., Any], make_lm: Callable[..., pf.LanguageModel]
) -> None:
    teacher = make_lm("arith")  # no gate: right without examples

    async def run() -> tuple[pf.Program, pf.optimizers.BootstrapFewShot, Any, int]:
        optimizer = pf.optimizers.BootstrapFewShot(
            max_bootstrapped_demos=2, max_labeled_demos=0, teacher=teacher, max_lm_calls=60
        )
        program = await calc_program("arith", min_examples=2, optimizer=optimizer)
        start = program.usage_totals().calls
        history = await program.fit(
            *arithmetic_data(40), epochs=20, batch_size=4, verbose=0, seed=0
        )
        return program, optimizer, history, program.usage_totals().calls - start

    program, optimizer, history, used = asyncio.run(run())
    assert teacher.usage.calls >= 4
    assert len(optimizer.bootstrapped["answer"]) >= 2
    assert used <= 60 and sum(history.history["lm_calls"]) == used
    assert len(program.get_variables()["answer/prompt"]["examples"]) == 2


def test_config_round_trip_and_state(make_lm: Callable[..., pf.LanguageModel]) -> None:
    teacher = make_lm("arith")
    optimizer = pf.optimizers.BootstrapFewShot(
        max_bootstrapped_demos=3, max_labeled_demos=5, teacher=teacher, seed=3, max_lm_calls=100
    )
    config = optimizer.get_config()
    clone = pf.optimizers.BootstrapFewShot.from_config(config)
    assert clone.get_config() == config
    assert "api_key" not in str(config)
    clone.load_state_dict(optimizer.state_dict())
    assert clone.state_dict() == optimizer.state_dict()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_bootstrapped_demos": -1}, "max_bootstrapped_demos"),
        ({"max_bootstrapped_demos": 0, "max_labeled_demos": 0}, "both 0"),
        ({"teacher": "gpt-4"}, "teacher"),
        ({"num_candidates": 0}, "num_candidates"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        pf.optimizers.BootstrapFewShot(**kwargs)
