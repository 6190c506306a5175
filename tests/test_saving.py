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


# -- program styles ----------------------------------------------------------------------------
def test_sequential_round_trip(make_lm: Callable[..., pf.LanguageModel], tmp_path: Path) -> None:
    lm = make_lm("arith")
    program = pf.Sequential(
        [pf.Input(data_model=Query), pf.Generator(data_model=Answer, language_model=lm)],
        name="seq",
    )
    program.save(tmp_path / "seq.json")
    loaded = pf.load_program(tmp_path / "seq.json", language_models={lm.name: lm})
    assert type(loaded) is pf.Sequential and loaded.name == "seq"
    assert loaded.get_variables() == program.get_variables()
    assert asyncio.run(loaded(Query(question="What is 4 + 4?"))).answer == "8"


@pf.saving.register_serializable(package="tests")
class SubCalc(pf.Program):
    """A subclassed program whose constructor needs a client: not rebuildable by itself."""

    def __init__(self, lm: pf.LanguageModel, name: str = "subcalc", **kwargs: Any) -> None:
        super().__init__(name=name, input_data_model=Query, output_data_model=Answer)
        self.solver = pf.Generator(data_model=Answer, language_model=lm, name="sub_solver")

    async def call(self, inputs: Query) -> Any:
        return await self.solver(inputs)


@pf.saving.register_serializable(package="tests")
class SubCalcWithConfig(SubCalc):
    """The Keras recipe: from_config receives the clients and rebuilds the program."""

    @classmethod
    def from_config(cls, config: dict[str, Any], **kwargs: Any) -> pf.Program:
        (lm,) = (kwargs.get("language_models") or {}).values()
        return cls(lm, name=config["name"])


def test_subclassed_program_needs_its_own_from_config(
    make_lm: Callable[..., pf.LanguageModel], tmp_path: Path
) -> None:
    lm = make_lm("arith")
    program = SubCalc(lm)
    program.solver.prompt.assign({**program.solver.prompt.value, "instructions": "Be exact."})
    path = program.save(tmp_path / "sub.json")

    with pytest.raises(SerializationError, match=r"get_config\(\) must return every argument"):
        pf.load_program(path)
    with pytest.raises(SerializationError, match="`language_models=` would be ignored"):
        pf.load_program(path, language_models={lm.name: lm})

    rebuilt = SubCalc(lm)  # the documented way out: build in code, then load the variables
    rebuilt.load_variables(path)
    assert rebuilt.get_variables() == program.get_variables()

    SubCalcWithConfig(lm).save(tmp_path / "sub2.json")
    loaded = pf.load_program(tmp_path / "sub2.json", language_models={lm.name: lm})
    assert type(loaded) is SubCalcWithConfig
    assert asyncio.run(loaded(Query(question="What is 2 + 5?"))).answer == "7"


# -- safe_mode: a file must not choose where your key goes --------------------------------------
def _saved_with_lm(tmp_path: Path, **lm_config: Any) -> Path:
    """A program file whose language model config is edited the way an attacker would."""
    lm = pf.LanguageModel(model="openai/arith", api_base="http://127.0.0.1:9/v1", name="m")
    inputs = pf.Input(data_model=Query)
    outputs = asyncio.run(pf.Generator(data_model=Answer, language_model=lm, name="g")(inputs))
    path = pf.Program(inputs=inputs, outputs=outputs, name="p").save(tmp_path / "p.json")
    data = json.loads(path.read_text())
    data["config"]["modules"]["g"]["config"]["language_model"].update(lm_config)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("lm_config", "named"),
    [
        ({"api_base": "https://attacker.example/v1"}, "api_base='https://attacker.example/v1'"),
        ({"api_base": "http://10.0.0.5:8000/v1"}, "api_base="),
        # A list of replicas: one remote entry among loopback ones is enough to refuse.
        (
            {"api_base": ["http://127.0.0.1:8000/v1", "https://attacker.example/v1"]},
            "api_base='https://attacker.example/v1'",
        ),
        ({"base_url": "https://attacker.example"}, "'base_url'"),
        ({"extra_headers": {"X-Forward": "1"}}, "'extra_headers'"),
        ({"cache": "/nonexistent/promptfit-cache.sqlite"}, "response cache"),
        ({"cache": "../../cache.sqlite"}, "response cache"),
    ],
)
def test_safe_mode_refuses_what_could_redirect_a_key(
    tmp_path: Path, lm_config: dict[str, Any], named: str
) -> None:
    path = _saved_with_lm(tmp_path, **lm_config)
    with pytest.raises(pf.errors.UnsafeFileError, match="safe_mode=False") as caught:
        pf.load_program(path, api_key="sk-test-secret-key")
    assert named in str(caught.value) and "language_models={'m': lm}" in str(caught.value)
    assert "sk-test-secret-key" not in str(caught.value)

    trusted = pf.load_program(path, safe_mode=False)  # the user's explicit decision
    (generator,) = trusted.language_models
    assert all(generator.get_config()[k] == v for k, v in lm_config.items())

    own = pf.LanguageModel(model="openai/arith", api_base="http://127.0.0.1:9/v1", name="m")
    replaced = pf.load_program(path, language_models={"m": own})  # never checked: yours
    assert replaced.language_models == [own]


@pytest.mark.parametrize(
    ("api_base", "named"),
    [
        ([], "not a URL nor a non-empty list"),
        (["http://127.0.0.1:8000/v1", 5], "not a URL nor a non-empty list"),
        ({"url": "http://127.0.0.1:8000/v1"}, "not a URL nor a non-empty list"),
        (
            ["http://127.0.0.1:8000/v1", "http://10.0.0.5:8000/v1", "https://evil.example/v1"],
            "api_base='http://10.0.0.5:8000/v1'",
        ),
    ],
)
def test_safe_mode_judges_every_replica_of_an_api_base_list(
    tmp_path: Path, api_base: Any, named: str
) -> None:
    path = _saved_with_lm(tmp_path, api_base=api_base)
    with pytest.raises(pf.errors.UnsafeFileError, match="safe_mode=False") as caught:
        pf.load_program(path)
    assert named in str(caught.value)
    if isinstance(api_base, list) and len(api_base) == 3:
        assert "https://evil.example/v1" in str(caught.value)  # every bad replica is named


def test_safe_mode_trusts_an_allowed_provider_only_at_loopback_replicas(tmp_path: Path) -> None:
    local = ["http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1"]
    path = _saved_with_lm(tmp_path, model="openai/gpt-4o-mini", api_base=local)
    (lm,) = pf.load_program(path, allowed_providers=["openai"]).language_models
    assert lm.api_base == local
    path = _saved_with_lm(
        tmp_path, model="openai/gpt-4o-mini", api_base=[*local, "https://proxy.example/v1"]
    )
    with pytest.raises(pf.errors.UnsafeFileError, match=r"proxy\.example"):
        pf.load_program(path, allowed_providers=["openai"])


@pytest.mark.parametrize(
    "lm_config",
    [
        {"api_base": "http://localhost:8000/v1"},
        {"api_base": "http://127.0.0.2:8000/v1"},
        {"api_base": "http://[::1]:8000/v1"},
        {"api_base": ["http://localhost:8000/v1", "http://127.0.0.2:8000/v1", "http://[::1]:8/v1"]},
        {"top_p": 0.9, "seed": 3, "stop": ["\n\n"]},
        {"cache": "runs/cache.sqlite"},
    ],
)
def test_safe_mode_allows_loopback_and_generation_parameters(
    tmp_path: Path, lm_config: dict[str, Any]
) -> None:
    loaded = pf.load_program(_saved_with_lm(tmp_path, **lm_config))
    (lm,) = loaded.language_models
    assert all(lm.get_config()[k] == v for k, v in lm_config.items())
