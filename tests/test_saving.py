"""Save and load: JSON only, versioned, atomic, no code execution, no API keys."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import promptfit as pf
from promptfit.errors import SerializationError
from tests.conftest import Answer, Query, arithmetic_data


async def _program(lm: pf.LanguageModel) -> pf.Program:
    inputs = pf.Input(data_model=Query)
    outputs = await pf.ChainOfThought(
        data_model=Answer,
        language_model=lm,
        instructions="Answer with a number.",
        examples=[
            {
                "inputs": {"question": "What is 1 + 1?"},
                "outputs": {"thinking": "1+1", "answer": "2"},
            }
        ],
        name="solver",
    )(inputs)
    return pf.Program(inputs=inputs, outputs=outputs, name="calc", description="adds numbers")


def test_round_trip_keeps_structure_variables_and_behaviour(
    make_lm: Callable[..., pf.LanguageModel], tmp_path: Path
) -> None:
    path = tmp_path / "calc.json"

    async def run() -> tuple[pf.Program, pf.Program, dict[str, float]]:
        program = await _program(make_lm("arith"))
        program.save(path)
        loaded = pf.load_program(path, api_key="sk-test-secret-key")
        loaded.compile(reward=pf.rewards.ExactMatch(in_mask=["answer"]))
        return program, loaded, await loaded.evaluate(*arithmetic_data(3), verbose=0)

    program, loaded, scores = asyncio.run(run())
    assert loaded.name == "calc" and loaded.description == "adds numbers"
    assert loaded.get_variables() == program.get_variables()
    assert scores["reward"] == 1.0
    text = path.read_text()
    assert "sk-test-secret-key" not in text and "api_key" not in text
    data = json.loads(text)
    assert data["format"] == "promptfit.program" and data["version"] == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_unregistered_data_models_are_rebuilt_from_schema(
    make_lm: Callable[..., pf.LanguageModel], tmp_path: Path
) -> None:
    path = tmp_path / "calc.json"
    program = asyncio.run(_program(make_lm("arith")))
    program.save(path)
    data = json.loads(path.read_text())
    data["config"]["nodes"][0]["data_model"]["name"] = "somewhere.else.Query"
    path.write_text(json.dumps(data))
    loaded = pf.load_program(path)
    assert loaded.input_data_model is not Query
    assert set(loaded.input_data_model.model_fields) == {"question"}


def test_unknown_class_is_refused_without_importing(
    tmp_path: Path, make_lm: Callable[..., Any]
) -> None:
    path = tmp_path / "calc.json"
    asyncio.run(_program(make_lm("arith"))).save(path)
    data = json.loads(path.read_text())
    data["config"]["modules"]["solver"]["class_name"] = "os>system"
    path.write_text(json.dumps(data))
    with pytest.raises(SerializationError, match="register_serializable"):
        pf.load_program(path)


def test_function_modules_need_registration(tmp_path: Path) -> None:
    def private(q: Query) -> Answer:
        return Answer(answer=q.question)

    @pf.saving.register_serializable(name="echo_question")
    def public(q: Query) -> Answer:
        return Answer(answer=q.question)

    inputs = pf.Input(data_model=Query)
    bad = pf.Program(
        inputs=inputs, outputs=pf.FunctionModule(private, data_model=Answer)._symbolic_call(inputs)
    )
    with pytest.raises(SerializationError, match="register_serializable"):
        bad.save(tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()

    inputs = pf.Input(data_model=Query)
    good = pf.Program(
        inputs=inputs, outputs=pf.FunctionModule(public, data_model=Answer)._symbolic_call(inputs)
    )
    good.save(tmp_path / "good.json")
    loaded = pf.load_program(tmp_path / "good.json")
    assert asyncio.run(loaded(Query(question="hi"))).answer == "hi"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": "something-else", "version": 1}', "not a promptfit.program"),
        ('{"format": "promptfit.program", "version": 99}', "Upgrade promptfit"),
    ],
)
def test_bad_files_fail_clearly(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(SerializationError, match=match):
        pf.load_program(path)


def test_save_and_load_variables(make_lm: Callable[..., pf.LanguageModel], tmp_path: Path) -> None:
    program = asyncio.run(_program(make_lm("arith")))
    program.save_variables(tmp_path / "v.json")
    original = program.get_variables()
    program.set_variables({"solver/prompt": {"instructions": "changed", "examples": []}})
    program.load_variables(tmp_path / "v.json")
    assert program.get_variables() == original
    with pytest.raises(SerializationError, match="Unknown modules"):
        program.save_variables(tmp_path / "w.json", module_names=["nope"])


def test_loaded_program_shares_one_client_per_lm(
    make_lm: Callable[..., pf.LanguageModel], tmp_path: Path
) -> None:
    async def build() -> pf.Program:
        lm = make_lm("arith")
        inputs = pf.Input(data_model=Query)
        a = await pf.Generator(data_model=Answer, language_model=lm, name="a")(inputs)
        b = await pf.Generator(data_model=Answer, language_model=lm, name="b")(inputs)
        return pf.Program(inputs=inputs, outputs=[a, b])

    program = asyncio.run(build())
    program.save(tmp_path / "two.json")
    loaded = pf.load_program(tmp_path / "two.json", api_key="sk-test-secret-key")
    assert len(loaded.language_models) == 1
    out = asyncio.run(loaded(Query(question="What is 1 + 2?")))
    assert [o.answer for o in out] == ["3", "3"]


def test_missing_key_is_a_configuration_error(
    make_lm: Callable[..., pf.LanguageModel], tmp_path: Path
) -> None:
    program = asyncio.run(_program(make_lm("arith")))
    program.save(tmp_path / "p.json")
    loaded = pf.load_program(tmp_path / "p.json")
    with pytest.raises(pf.errors.LMConfigurationError, match="api_key"):
        asyncio.run(loaded(Query(question="What is 1 + 2?")))
