"""Programs: functional, subclassed and Sequential; modules; variables; evaluate and predict."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest

import promptfit as pf
from promptfit.errors import ConfigurationError, DataError, VariableValidationError
from tests.conftest import Answer, Query, arithmetic_data


class Sum(pf.DataModel):
    question: str
    hint: str = ""


async def _functional(lm: pf.LanguageModel) -> pf.Program:
    inputs = pf.Input(data_model=Query)
    outputs = await pf.Generator(data_model=Answer, language_model=lm, name="solver")(inputs)
    return pf.Program(inputs=inputs, outputs=outputs, name="calc")


def test_functional_program_evaluates_and_predicts(
    make_lm: Callable[..., pf.LanguageModel],
) -> None:
    async def run() -> tuple[dict[str, float], list[Any]]:
        program = await _functional(make_lm("arith"))
        program.compile(
            reward=pf.rewards.ExactMatch(in_mask=["answer"]),
            metrics=[
                pf.metrics.Accuracy(in_mask=["answer"]),
                pf.metrics.F1Score(in_mask=["answer"], average="micro"),
            ],
        )
        x, y = arithmetic_data(12)
        scores = await program.evaluate(x=x, y=y, batch_size=5, verbose=0)
        preds = await program.predict(x, batch_size=5, verbose=0)
        return scores, preds

    scores, preds = asyncio.run(run())
    assert scores["reward"] == 1.0
    assert scores["accuracy"] == 1.0 and scores["f1_score"] == 1.0
    assert scores["lm_calls"] == 12 and scores["failed_calls"] == 0
    assert [p.answer for p in preds][:3] == ["1", "4", "7"]


def test_failed_calls_give_none_and_zero_reward(make_lm: Callable[..., pf.LanguageModel]) -> None:
    async def run() -> tuple[dict[str, float], list[Any]]:
        lm = make_lm("arith", error_rate=0.5, error_status=500, lm_kwargs={"max_retries": 0})
        program = await _functional(lm)
        program.compile(reward=pf.rewards.ExactMatch())
        x, y = arithmetic_data(20)
        # Half the calls fail at random, so the first few to finish may all be failures;
        # fail-fast has its own tests (test_structured_output) and is not the subject here.
        scores = await program.evaluate(x, y, verbose=0, fail_fast=False)
        return scores, await program.predict(x, verbose=0)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The first 5 LM calls", RuntimeWarning)
        scores, preds = asyncio.run(run())
    failed = sum(p is None for p in preds)
    assert 0 < scores["failed_calls"] < 20
    assert scores["reward"] == pytest.approx(1 - scores["failed_calls"] / 20)
    assert failed >= 1


def test_dataframe_input(make_lm: Callable[..., pf.LanguageModel]) -> None:
    async def run() -> dict[str, float]:
        program = await _functional(make_lm("arith"))
        program.compile(reward=pf.rewards.ExactMatch())
        x, y = arithmetic_data(4)
        return await program.evaluate(pd.DataFrame(x), pd.DataFrame(y), verbose=0)

    assert asyncio.run(run())["reward"] == 1.0


def test_bad_data_names_row_and_fields(make_lm: Callable[..., pf.LanguageModel]) -> None:
    async def run() -> None:
        program = await _functional(make_lm("arith"))
        program.compile(reward=pf.rewards.ExactMatch())
        await program.evaluate([{"question": "1 + 1"}, {"questoin": "typo"}], [{"answer": "2"}] * 2)

    with pytest.raises(DataError, match=r"x\[1\].*question"):
        asyncio.run(run())


def test_evaluate_requires_compile(make_lm: Callable[..., pf.LanguageModel]) -> None:
    async def run() -> None:
        program = await _functional(make_lm("arith"))
        await program.evaluate(*arithmetic_data(2))

    with pytest.raises(ConfigurationError, match="compile"):
        asyncio.run(run())


def test_two_step_program_with_function_module(make_lm: Callable[..., pf.LanguageModel]) -> None:
    def add_hint(q: Query) -> Sum:
        return Sum(question=q.question, hint="add the numbers")

    async def run() -> Any:
        lm = make_lm("arith")
        inputs = pf.Input(data_model=Query)
        hinted = await pf.FunctionModule(add_hint, data_model=Sum)(inputs)
        outputs = await pf.ChainOfThought(data_model=Answer, language_model=lm)(hinted)
        program = pf.Program(inputs=inputs, outputs=outputs)
        assert [type(m).__name__ for m in program.modules] == ["FunctionModule", "ChainOfThought"]
        return await program(Query(question="What is 7 + 5?"))

    out = asyncio.run(run())
    assert out.answer == "12"
    assert out.thinking  # ChainOfThought adds a reasoning field


def test_subclassed_program(make_lm: Callable[..., pf.LanguageModel]) -> None:
    class Calc(pf.Program):
        def __init__(self, lm: pf.LanguageModel) -> None:
            super().__init__(name="sub", input_data_model=Query, output_data_model=Answer)
            self.solver = pf.Generator(data_model=Answer, language_model=lm, name="sub_solver")

        async def call(self, inputs: Query) -> Any:
            return await self.solver(inputs)

    async def run() -> tuple[dict[str, float], pf.Program]:
        program = Calc(make_lm("arith"))
        program.compile(reward=pf.rewards.ExactMatch())
        return await program.evaluate(*arithmetic_data(3), verbose=0), program

    scores, program = asyncio.run(run())
    assert scores["reward"] == 1.0
    assert [v.path for v in program.trainable_variables] == ["sub_solver/prompt"]
    assert program.get_module("sub_solver") is program.solver


def test_sequential(make_lm: Callable[..., pf.LanguageModel]) -> None:
    lm = make_lm("arith")
    program = pf.Sequential(
        [pf.Input(data_model=Query), pf.Generator(data_model=Answer, language_model=lm)], name="seq"
    )
    out = asyncio.run(program(Query(question="What is 2 * 6?")))
    assert out.answer == "12"
    with pytest.raises(ConfigurationError, match="Input"):
        pf.Sequential([pf.Generator(data_model=Answer, language_model=lm)])


def test_variables_validate_and_set_atomically(make_lm: Callable[..., pf.LanguageModel]) -> None:
    program = asyncio.run(_functional(make_lm("arith")))
    snapshot = program.get_variables()
    assert list(snapshot) == ["solver/prompt"]
    good = {
        "instructions": "Be exact.",
        "examples": [{"inputs": {"question": "What is 1 + 1?"}, "outputs": {"answer": "2"}}],
    }
    program.set_variables({"solver/prompt": good})
    assert program.get_module("solver").prompt.value["instructions"] == "Be exact."
    bad = {
        "instructions": "x",
        "examples": [{"inputs": {"question": "q"}, "outputs": {"wrong": 1}}],
    }
    with pytest.raises(VariableValidationError, match="solver/prompt"):
        program.set_variables({"solver/prompt": bad})
    with pytest.raises(VariableValidationError, match="Unknown variables"):
        program.set_variables({"nope/prompt": good})
    assert program.get_variables()["solver/prompt"]["instructions"] == "Be exact."
    program.set_variables(snapshot)
    assert program.get_variables() == snapshot


def test_examples_reach_the_prompt(make_lm: Callable[..., pf.LanguageModel]) -> None:
    lm = make_lm("arith")
    gen = pf.Generator(
        data_model=Answer,
        language_model=lm,
        instructions="Answer.",
        examples=[{"inputs": {"question": "What is 1 + 1?"}, "outputs": {"answer": "2"}}],
        input_data_model=Query,
    )
    messages = gen.messages(Query(question="What is 2 + 2?"))
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"].startswith("Answer.\n\nOutput JSON schema: {")
    assert messages[2]["content"] == '{"answer": "2"}'


def test_duplicate_module_names_are_rejected(make_lm: Callable[..., pf.LanguageModel]) -> None:
    async def run() -> None:
        lm = make_lm("arith")
        inputs = pf.Input(data_model=Query)
        a = await pf.Generator(data_model=Answer, language_model=lm, name="same")(inputs)
        b = await pf.FunctionModule(lambda x: x, data_model=Answer, name="same")(a)
        pf.Program(inputs=inputs, outputs=b)

    with pytest.raises(ConfigurationError, match="unique"):
        asyncio.run(run())


def test_summary_lists_modules(make_lm: Callable[..., pf.LanguageModel], capsys: Any) -> None:
    program = asyncio.run(_functional(make_lm("arith")))
    text = program.summary()
    assert "solver" in text and "Generator" in text


def test_programs_and_generators_take_plain_dicts(
    make_lm: Callable[..., pf.LanguageModel],
) -> None:
    """As evaluate and predict do: a dict is validated into the input data model."""
    lm = make_lm("arith")

    async def run() -> None:
        program = await _functional(lm)
        assert (await program({"question": "What is 2 + 9?"})).answer == "11"
        generator = pf.Generator(data_model=Answer, language_model=lm, input_data_model=Query)
        assert (await generator({"question": "What is 3 + 3?"})).answer == "6"
        with pytest.raises(ConfigurationError, match="does not know its input data model"):
            await pf.Generator(data_model=Answer, language_model=lm)({"question": "1 + 1?"})
        with pytest.raises(DataError, match=r"does not match Query .*question"):
            await program({"text": "What is 2 + 9?"})
        with pytest.raises(DataError, match="expected a dict or Query"):
            await program(42)
        with pytest.raises(DataError, match="expected a DataModel instance or a dict"):
            await generator(42)

    asyncio.run(run())
