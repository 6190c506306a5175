"""Issue 12, items 1 and 2: the functional graph lives beside Program, the version has one source,
and CallbackList builds a fit's default callbacks from a registry that observability fills."""

from __future__ import annotations

import asyncio
import json
import re
import tomllib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import promptfit as pf
from promptfit._version import __version__
from promptfit.callbacks.defaults import (
    default_callbacks,
    register_default_callback_factory,
    registered_default_callback_factories,
    unregister_default_callback_factory,
)
from promptfit.errors import SerializationError
from promptfit.observability.enable import (
    MONITOR_FACTORY,
    disable_observability,
    enable_observability,
)
from promptfit.programs.functional_config import ProgramGraph
from tests.conftest import Answer, Query, arithmetic_data

ROOT = Path(__file__).resolve().parents[1]


async def _two_steps(lm: pf.LanguageModel) -> pf.Program:
    inputs = pf.Input(data_model=Query)
    first = await pf.Generator(data_model=Answer, language_model=lm, name="first")(inputs)
    second = await pf.Generator(data_model=Answer, language_model=lm, name="second")(first)
    return pf.Program(inputs=inputs, outputs=second, name="two", description="two steps")


# -- item 1: the graph beside Program ------------------------------------------------------------
def test_program_graph_is_read_only_and_round_trips(
    make_lm: Callable[..., pf.LanguageModel],
) -> None:
    lm = make_lm("arith")
    program = asyncio.run(_two_steps(lm))
    graph = program.graph
    assert isinstance(graph, ProgramGraph)
    assert [node.module.name for node in graph.nodes][1:] == ["first", "second"]
    assert len(graph.inputs) == 1 and len(graph.outputs) == 1 and graph.single_output
    with pytest.raises(AttributeError):
        graph.single_output = False  # type: ignore[misc]

    config = program.get_config()
    assert [n.get("module") for n in config["nodes"]] == [None, "first", "second"]
    assert config["nodes"][2]["inputs"] == [1]  # "second" reads what "first" produced
    rebuilt = pf.Program.from_config(config, language_models={lm.name: lm})
    assert rebuilt.get_config() == config
    assert rebuilt.description == "two steps"


def test_a_subclassed_program_has_no_graph() -> None:
    class Echo(pf.Program):
        async def call(self, inputs: Any) -> Any:
            return inputs

    assert Echo(name="echo").graph is None


def test_load_program_refuses_a_class_that_is_not_a_program(
    make_lm: Callable[..., pf.LanguageModel], tmp_path: Path
) -> None:
    """saving/ no longer imports Program: a registered module class named by the file is still
    refused by name, before its from_config runs."""
    lm = make_lm("arith")
    path = asyncio.run(_two_steps(lm)).save(tmp_path / "two.json")
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["promptfit_version"] == __version__
    document["class_name"] = "promptfit>Generator"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(SerializationError, match="'promptfit>Generator' is not a Program"):
        pf.load_program(path, language_models={lm.name: lm})


def test_the_version_has_one_source() -> None:
    assert pf.__version__ == __version__
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" in project["project"]["dynamic"] and "version" not in project["project"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "promptfit._version.__version__"}
    defined = [
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "promptfit").rglob("*.py")
        if re.search(r"^__version__\s*=", path.read_text(encoding="utf-8"), re.MULTILINE)
    ]
    assert defined == ["promptfit/_version.py"]


# -- item 2: default callbacks -------------------------------------------------------------------
class _Recorder(pf.callbacks.Callback):
    """Appends its label to a shared list when the fit begins: the list order is the hook
    order."""

    def __init__(self, label: str, seen: list[str], snapshots: bool = False) -> None:
        super().__init__()
        self.label = label
        self.seen = seen
        self.snapshots_fit_state = snapshots

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.seen.append(self.label)


@pytest.fixture()
def factory_name() -> Iterator[str]:
    name = "tests.recorder"
    yield name
    unregister_default_callback_factory(name)


def _fit(program: pf.Program, callbacks: list[Any]) -> Any:
    x, y = arithmetic_data(4)
    return asyncio.run(program.fit(x, y, epochs=1, batch_size=4, verbose=0, callbacks=callbacks))


def test_a_registered_default_joins_every_fit_before_snapshot_callbacks(
    calc_program: Callable[..., Any], factory_name: str
) -> None:
    seen: list[str] = []
    given: list[list[str]] = []

    def factory(user_callbacks: Any) -> pf.callbacks.Callback:
        given.append([getattr(c, "label", "") for c in user_callbacks])
        return _Recorder("default", seen)

    register_default_callback_factory(factory_name, factory)
    program = asyncio.run(calc_program())
    snapshot = _Recorder("snapshot", seen, snapshots=True)
    history = _fit(program, [snapshot, _Recorder("user", seen)])
    assert seen == ["user", "default", "snapshot"]
    assert given == [["snapshot", "user"]]  # the factory sees the user's callbacks
    assert isinstance(history, pf.callbacks.History) and len(history.epoch) == 1

    unregister_default_callback_factory(factory_name)
    seen.clear()
    _fit(program, [_Recorder("user", seen)])
    assert seen == ["user"]


def test_a_failing_default_costs_a_warning_not_the_fit(
    calc_program: Callable[..., Any], factory_name: str
) -> None:
    def broken(user_callbacks: Any) -> Any:
        raise RuntimeError("no tracking today")

    register_default_callback_factory(factory_name, broken)
    program = asyncio.run(calc_program())
    with pytest.warns(RuntimeWarning, match="'tests.recorder' could not be created"):
        history = _fit(program, [])
    assert len(history.epoch) == 1

    register_default_callback_factory(factory_name, lambda user_callbacks: "not a callback")
    with pytest.warns(RuntimeWarning, match="returned str, not a Callback"):
        assert default_callbacks([]) == []


def test_enable_observability_registers_the_monitor_factory_and_disable_removes_it(
    tmp_path: Path,
) -> None:
    assert MONITOR_FACTORY not in registered_default_callback_factories()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's own deprecation chatter
        enable_observability(f"sqlite:///{tmp_path / 'mlflow.db'}", experiment_name="defaults")
    try:
        assert MONITOR_FACTORY in registered_default_callback_factories()
        added = default_callbacks([])
        assert [type(c).__name__ for c in added] == ["Monitor"]
        assert default_callbacks([pf.callbacks.Monitor()]) == []  # the user's own wins
    finally:
        disable_observability()
    assert MONITOR_FACTORY not in registered_default_callback_factories()
    assert default_callbacks([]) == []


def test_callback_list_adds_history_only_when_the_user_has_none() -> None:
    mine = pf.callbacks.History()
    with_mine = pf.callbacks.CallbackList([mine], add_history=True)
    assert with_mine.history is mine and len(with_mine) == 1
    built = pf.callbacks.CallbackList(
        [], add_history=True, add_progbar=True, progbar_mode="predict"
    )
    assert [type(c).__name__ for c in built] == ["History", "ProgbarLogger"]
    assert built.callbacks[1].mode == "predict"  # type: ignore[attr-defined]
    assert pf.callbacks.CallbackList([]).history is None
