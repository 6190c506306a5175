"""ProgramCheckpoint and the checkpoint manifest: names, best-only, top-k, tolerances, on_best."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import promptfit as pf
from promptfit.callbacks.early_stopping import EarlyStopping
from promptfit.callbacks.program_checkpoint import ProgramCheckpoint
from promptfit.checkpoints import (
    CheckpointManifest,
    best_checkpoint,
    latest_checkpoint,
    read_manifest,
)
from promptfit.errors import CheckpointError, ConfigurationError, MonitorKeyError
from tests.conftest import Answer, Query, arithmetic_data


@pytest.fixture()
def program(calc_program: Callable[..., Any]) -> pf.Program:
    """A real compiled program (building it makes no LM call)."""
    return asyncio.run(calc_program("arith"))


def mark(program: pf.Program, epoch: int) -> None:
    variables = program.get_variables()
    for value in variables.values():
        value["instructions"] = f"epoch {epoch}"
    program.set_variables(variables)


def drive(
    program: pf.Program,
    callback: ProgramCheckpoint,
    values: Sequence[float | None],
    monitor: str = "val_reward",
    extra: dict[str, Any] | None = None,
    start: int = 0,
    stop: int | None = None,
) -> None:
    """Run the hooks fit runs, one epoch per value (``None``: the key is not logged)."""

    async def run() -> None:
        callback.set_program(program)
        callback.set_params({"epochs": len(values)})
        await callback.on_train_begin({})
        for epoch in range(start, len(values) if stop is None else stop):
            mark(program, epoch)
            await callback.on_epoch_begin(epoch, {})
            logs: dict[str, Any] = {"reward": 0.25, "lm_calls": 4, **(extra or {})}
            if values[epoch] is not None:
                logs[monitor] = values[epoch]
            await callback.on_epoch_end(epoch, logs)
        await callback.on_train_end({})

    asyncio.run(run())


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != "checkpoints.json")


def manifest_json(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "checkpoints.json").read_text())


def tags(directory: Path) -> dict[str, list[str]]:
    return {e["path"]: e["tags"] for e in manifest_json(directory)["checkpoints"] if e["tags"]}


def saved_instructions(path: str | Path) -> str:
    data = json.loads(Path(path).read_text())
    return next(iter(data["variables"].values()))["instructions"]


# -- file names ------------------------------------------------------------------------------


def test_filename_formatting_and_program_files(program: pf.Program, tmp_path: Path) -> None:
    cb = ProgramCheckpoint(tmp_path / "ckpt-{epoch:02d}-{val_reward:.3f}.json")
    drive(program, cb, [0.5, 0.75])
    assert files(tmp_path) == ["ckpt-01-0.500.json", "ckpt-02-0.750.json"]
    text = (tmp_path / "ckpt-02-0.750.json").read_text()
    assert "sk-test-secret-key" not in text  # API keys are never written
    loaded = pf.load_program(tmp_path / "ckpt-02-0.750.json")
    assert loaded.get_variables() == program.get_variables()
    assert saved_instructions(tmp_path / "ckpt-01-0.500.json") == "epoch 0"


def test_fields_in_directories_put_the_manifest_above_them(
    program: pf.Program, tmp_path: Path
) -> None:
    cb = ProgramCheckpoint(tmp_path / "run" / "e{epoch}" / "program.json")
    drive(program, cb, [0.5, 0.6])
    entries = manifest_json(tmp_path / "run")["checkpoints"]
    assert [e["path"] for e in entries] == ["e1/program.json", "e2/program.json"]
    assert latest_checkpoint(tmp_path / "run") == str(tmp_path / "run" / "e2" / "program.json")


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("ckpt-{epoch.real}.json", "attribute"),
        ("ckpt-{val_reward[0]}.json", "index"),
        ("ckpt-{epoch!r}.json", "conversion"),
        ("ckpt-{}.json", "positional"),
        ("ckpt-{0}.json", "positional"),
        ("ckpt-{epoch:{width}}.json", "nested"),
        ("ckpt-{epoch.json", "not a valid format string"),
        ("ckpt-}.json", "not a valid format string"),
        ("ckpt-{epoch:.2x}.json", "integer"),
        ("ckpt-{batch}.json", "save_freq"),
    ],
)
def test_bad_templates_fail_at_construction(template: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        ProgramCheckpoint(template)


def test_literal_braces_are_allowed(program: pf.Program, tmp_path: Path) -> None:
    drive(program, ProgramCheckpoint(tmp_path / "{{run}}-{epoch}.json"), [0.5])
    assert files(tmp_path) == ["{run}-1.json"]


def test_missing_and_unformattable_keys(program: pf.Program, tmp_path: Path) -> None:
    cb = ProgramCheckpoint(tmp_path / "ckpt-{val_accuracy:.2f}.json")
    with pytest.raises(MonitorKeyError) as info:
        drive(program, cb, [0.5])
    assert isinstance(info.value, KeyError)
    assert "val_accuracy" in str(info.value)
    assert "['epoch', 'lm_calls', 'reward', 'val_reward']" in str(info.value)
    cb = ProgramCheckpoint(tmp_path / "ckpt-{val_reward:d}.json")
    with pytest.raises(ConfigurationError, match="format"):
        drive(program, cb, [0.5])
    assert files(tmp_path) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"save_freq": 0},
        {"save_freq": "batch"},
        {"save_freq": True},
        {"keep_top_k": 0},
        {"tolerances": [0]},
        {"tolerances": 2},
        {"module_names": "answer"},
        {"module_names": []},
        {"on_best": [object()]},
        {"mode": "highest"},
        {"verbose": "loud"},
        {"initial_value_threshold": "0.5"},
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        ProgramCheckpoint(tmp_path / "ckpt-{epoch}.json", **kwargs)


def test_retention_needs_distinct_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"\{epoch\}"):
        ProgramCheckpoint(tmp_path / "best.json", keep_top_k=2)
    with pytest.raises(ConfigurationError, match=r"\{batch\}"):
        ProgramCheckpoint(tmp_path / "c-{epoch}.json", tolerances=[2], save_freq=5)


# -- what and when ---------------------------------------------------------------------------


def test_save_best_only_with_threshold(
    program: pf.Program, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cb = ProgramCheckpoint(
        tmp_path / "c-{epoch}.json", save_best_only=True, initial_value_threshold=0.6, verbose=1
    )
    drive(program, cb, [0.5, 0.7, 0.7, 0.65, 0.8])
    assert files(tmp_path) == ["c-2.json", "c-5.json"]
    assert cb.best == 0.8
    out = capsys.readouterr().out
    assert "Epoch 1: val_reward did not improve from 0.60000" in out
    assert "Epoch 2: val_reward improved from 0.60000 to 0.70000, saving program to" in out


def test_save_best_only_overwrites_one_file(program: pf.Program, tmp_path: Path) -> None:
    cb = ProgramCheckpoint(tmp_path / "best.json", save_best_only=True, monitor="val_loss")
    drive(program, cb, [0.5, 0.6, 0.3, 0.4], monitor="val_loss")
    assert files(tmp_path) == ["best.json"]
    assert saved_instructions(tmp_path / "best.json") == "epoch 2"
    [entry] = manifest_json(tmp_path)["checkpoints"]
    assert entry["epoch"] == 3 and entry["value"] == 0.3 and entry["tags"] == ["best"]
    assert entry["mode"] == "min"


def test_overwritten_best_loses_its_tag(program: pf.Program, tmp_path: Path) -> None:
    drive(program, ProgramCheckpoint(tmp_path / "last.json"), [0.7, 0.5])
    [entry] = manifest_json(tmp_path)["checkpoints"]
    assert entry["epoch"] == 2 and entry["tags"] == []


def test_missing_monitor_skips_best_only_saves_with_one_warning(
    program: pf.Program, tmp_path: Path
) -> None:
    cb = ProgramCheckpoint(tmp_path / "c-{epoch}.json", save_best_only=True)
    with pytest.warns(UserWarning, match="ProgramCheckpoint monitors 'val_reward'") as record:
        drive(program, cb, [None, None])
    assert len(record) == 1 and files(tmp_path) == []
    with pytest.raises(MonitorKeyError):
        drive(program, ProgramCheckpoint(tmp_path / "c.json", strict=True), [None])


def test_module_names_and_variables_only(make_lm: Callable[..., Any], tmp_path: Path) -> None:
    async def build() -> pf.Program:
        lm = make_lm("arith")
        inputs = pf.Input(data_model=Query)
        first = await pf.Generator(data_model=Answer, language_model=lm, name="first")(inputs)
        second = await pf.Generator(data_model=Answer, language_model=lm, name="second")(first)
        return pf.Program(inputs=inputs, outputs=second, name="two")

    program = asyncio.run(build())
    cb = ProgramCheckpoint(tmp_path / "first-{epoch}.json", module_names=["first"])
    assert cb.kind == "variables"
    drive(program, cb, [0.5])
    data = json.loads((tmp_path / "first-1.json").read_text())
    assert data["format"] == "promptfit.variables"
    assert list(data["variables"]) == ["first/prompt"]
    assert manifest_json(tmp_path)["checkpoints"][0]["kind"] == "variables"

    drive(program, ProgramCheckpoint(tmp_path / "all-{epoch}.json", save_variables_only=True), [1])
    data = json.loads((tmp_path / "all-1.json").read_text())
    assert data["format"] == "promptfit.variables"
    assert sorted(data["variables"]) == ["first/prompt", "second/prompt"]

    bad = ProgramCheckpoint(tmp_path / "x-{epoch}.json", module_names=["first", "third"])
    with pytest.raises(ConfigurationError, match=r"\['third'\].*\['first', 'second'\]"):
        drive(program, bad, [0.5])


# -- retention -------------------------------------------------------------------------------


def test_keep_top_k_ties_earlier_wins_and_newest_kept(program: pf.Program, tmp_path: Path) -> None:
    cb = ProgramCheckpoint(tmp_path / "c-{epoch}.json", keep_top_k=2)
    drive(program, cb, [0.9, 0.5, 0.5, 0.1, 0.2])
    # top-2: epoch 1 (0.9) and epoch 2 (0.5, earlier than epoch 3); epoch 5 is the newest.
    assert files(tmp_path) == ["c-1.json", "c-2.json", "c-5.json"]
    assert [e["path"] for e in manifest_json(tmp_path)["checkpoints"]] == [
        "c-1.json",
        "c-2.json",
        "c-5.json",
    ]
    assert tags(tmp_path) == {"c-1.json": ["best"]}


@pytest.mark.parametrize("mode", ["max", "min"])
def test_a_tie_keeps_the_earlier_checkpoint_best_everywhere(
    program: pf.Program, tmp_path: Path, mode: str
) -> None:
    """The issue's case: the tag, the top-k ranking and best_checkpoint() agree on a tie.

    Before, the tag stayed on epoch 1 while ranking and best_checkpoint() picked epoch 2, so
    keep_top_k=1 kept three files (both tied ones and the newest).
    """
    values = [0.9, 0.9, 0.1, 0.05] if mode == "max" else [0.1, 0.1, 0.9, 0.95]
    cb = ProgramCheckpoint(tmp_path / "c-{epoch}.json", keep_top_k=1, mode=mode)
    drive(program, cb, values)
    # Exactly one file kept by rank (epoch 1, the earlier of the tie), plus the newest.
    assert files(tmp_path) == ["c-1.json", "c-4.json"]
    assert tags(tmp_path) == {"c-1.json": ["best"]}
    assert cb.best_path == "c-1.json"
    assert best_checkpoint(tmp_path) == str(tmp_path / "c-1.json")


def test_keep_top_k_min_mode(program: pf.Program, tmp_path: Path) -> None:
    cb = ProgramCheckpoint(tmp_path / "c-{epoch}.json", monitor="val_loss", keep_top_k=1)
    drive(program, cb, [0.5, 0.3, 0.4], monitor="val_loss")
    assert files(tmp_path) == ["c-2.json", "c-3.json"]
    assert best_checkpoint(tmp_path) == str(tmp_path / "c-2.json")


def test_keep_top_k_leaves_other_runs_alone(program: pf.Program, tmp_path: Path) -> None:
    drive(program, ProgramCheckpoint(tmp_path / "old-{epoch}.json"), [0.1, 0.2])
    drive(program, ProgramCheckpoint(tmp_path / "new-{epoch}.json", keep_top_k=1), [0.5, 0.6, 0.4])
    assert files(tmp_path) == ["new-2.json", "new-3.json", "old-1.json", "old-2.json"]


def test_tolerances_freeze_their_checkpoint(program: pf.Program, tmp_path: Path) -> None:
    values = [0.5, 0.6, 0.55, 0.7, 0.65, 0.6, 0.6, 0.8]
    cb = ProgramCheckpoint(tmp_path / "c-{epoch}.json", tolerances=[3, 1], keep_top_k=1)
    drive(program, cb, values)
    # tolerance 1 ran out at epoch 3 (best: epoch 2); tolerance 3 at epoch 7 (best: epoch 4);
    # the overall best is epoch 8. Everything else is beyond the top-1.
    assert files(tmp_path) == ["c-2.json", "c-4.json", "c-8.json"]
    assert tags(tmp_path) == {
        "c-2.json": ["tolerance_1"],
        "c-4.json": ["tolerance_3"],
        "c-8.json": ["best"],
    }
    state = cb.state_dict()
    assert state["tolerances"]["1"] == {
        "epochs_since_improvement": 1,
        "exhausted": True,
        "path": "c-2.json",
    }
    assert state["tolerances"]["3"]["exhausted"] is True
    assert cb.tolerances == [1, 3]


def test_tolerance_not_exhausted_follows_best(program: pf.Program, tmp_path: Path) -> None:
    cb = ProgramCheckpoint(tmp_path / "c-{epoch}.json", tolerances=[2], save_best_only=True)
    drive(program, cb, [0.5, 0.4, 0.6, 0.5, 0.7])
    assert tags(tmp_path) == {"c-5.json": ["best", "tolerance_2"]}
    assert cb.state_dict()["tolerances"]["2"]["exhausted"] is False


# -- on_best and notifications --------------------------------------------------------------


class Recorder(pf.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[Any] = []

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.events.append("begin")

    async def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.events.append((epoch, dict(logs or {})))

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.events.append("end")


def test_on_best_gets_prefixed_logs_on_new_best_only(program: pf.Program, tmp_path: Path) -> None:
    child = Recorder()
    cb = ProgramCheckpoint(tmp_path / "c-{epoch}.json", on_best=[child])
    drive(program, cb, [0.5, 0.4, 0.6])
    assert child.program is program
    assert child.params == {"epochs": 3}
    assert child.events == [
        "begin",
        (
            0,
            {
                "best=val_reward/reward": 0.25,
                "best=val_reward/lm_calls": 4,
                "best=val_reward/val_reward": 0.5,
            },
        ),
        (
            2,
            {
                "best=val_reward/reward": 0.25,
                "best=val_reward/lm_calls": 4,
                "best=val_reward/val_reward": 0.6,
            },
        ),
        "end",
    ]


# -- manifest --------------------------------------------------------------------------------


def test_manifest_entries(program: pf.Program, tmp_path: Path) -> None:
    cb = ProgramCheckpoint(tmp_path / "c-{epoch}.json")
    drive(program, cb, [0.5, 0.75], extra={"latency": float("nan"), "cost": float("inf")})
    data = manifest_json(tmp_path)
    assert data["format"] == "promptfit.checkpoints" and data["version"] == 1
    first, second = data["checkpoints"]
    assert set(first) >= {
        "path",
        "epoch",
        "batch",
        "monitor",
        "value",
        "metrics",
        "time",
        "kind",
        "tags",
    }
    assert first["path"] == "c-1.json" and first["epoch"] == 1 and first["batch"] is None
    assert first["monitor"] == "val_reward" and first["value"] == 0.5 and first["kind"] == "program"
    assert first["metrics"] == {
        "reward": 0.25,
        "lm_calls": 4,
        "latency": None,
        "cost": None,
        "val_reward": 0.5,
    }
    assert second["time"] >= first["time"] and second["tags"] == ["best"]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]  # atomic writes


def test_best_and_latest_checkpoint(program: pf.Program, tmp_path: Path) -> None:
    assert best_checkpoint(tmp_path) is None and latest_checkpoint(tmp_path) is None
    assert best_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path / "missing") is None
    drive(
        program,
        ProgramCheckpoint(tmp_path / "c-{epoch}.json"),
        [0.5, 0.9, 0.9, 0.7],
        extra={"val_cost": 1.0},
    )
    assert best_checkpoint(tmp_path) == str(tmp_path / "c-2.json")  # tie: the earlier wins
    assert latest_checkpoint(tmp_path) == str(tmp_path / "c-4.json")
    assert best_checkpoint(tmp_path, mode="min") == str(tmp_path / "c-1.json")
    # val_cost is 1.0 everywhere: a four-way tie, which the earliest checkpoint wins.
    assert best_checkpoint(tmp_path, monitor="val_cost") == str(tmp_path / "c-1.json")
    assert best_checkpoint(tmp_path / "checkpoints.json") == str(tmp_path / "c-2.json")
    with pytest.warns(UserWarning, match="no_such_key"):
        assert best_checkpoint(tmp_path, monitor="no_such_key", mode="max") is None
    with pytest.raises(ConfigurationError, match="mode="):
        best_checkpoint(tmp_path, monitor="exact")


def test_deleted_files_are_dropped(program: pf.Program, tmp_path: Path) -> None:
    cb = ProgramCheckpoint(tmp_path / "c-{epoch}.json")
    drive(program, cb, [0.5, 0.9, 0.7], stop=3)
    (tmp_path / "c-2.json").unlink()
    (tmp_path / "c-3.json").unlink()
    assert [e["path"] for e in read_manifest(tmp_path).entries] == ["c-1.json"]
    assert best_checkpoint(tmp_path) == str(tmp_path / "c-1.json")
    assert latest_checkpoint(tmp_path) == str(tmp_path / "c-1.json")
    assert len(manifest_json(tmp_path)["checkpoints"]) == 3  # reading never writes
    drive(program, cb, [0.5, 0.9, 0.7, 0.1], start=3)
    assert [e["path"] for e in manifest_json(tmp_path)["checkpoints"]] == ["c-1.json", "c-4.json"]


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        '{"format": "something.else", "version": 1, "checkpoints": []}',
        '{"format": "promptfit.checkpoints", "version": 99, "checkpoints": []}',
        '{"format": "promptfit.checkpoints", "version": 1, "checkpoints": {}}',
        '{"format": "promptfit.checkpoints", "version": 1, "checkpoints": [{"path": "../x"}]}',
        "[]",
    ],
)
def test_corrupt_manifest_raises_naming_the_file(
    content: str, tmp_path: Path, program: pf.Program
) -> None:
    manifest = tmp_path / "checkpoints.json"
    manifest.write_text(content)
    named = re.escape(str(manifest))
    for lookup in (best_checkpoint, latest_checkpoint, read_manifest):
        with pytest.raises(CheckpointError, match=named):
            lookup(tmp_path)
    with pytest.raises(CheckpointError, match=named):
        drive(program, ProgramCheckpoint(tmp_path / "c-{epoch}.json"), [0.5])


def test_manifest_class_api(tmp_path: Path) -> None:
    manifest = CheckpointManifest(tmp_path)
    assert len(manifest) == 0 and manifest.latest() is None and manifest.best("reward") is None
    assert manifest.path == tmp_path / "checkpoints.json"


# -- state and config ------------------------------------------------------------------------


def test_state_dict_resume_matches_uninterrupted_run(program: pf.Program, tmp_path: Path) -> None:
    values = [0.5, 0.6, 0.55, 0.7, 0.65, 0.6, 0.6, 0.8]

    def make(directory: Path) -> ProgramCheckpoint:
        return ProgramCheckpoint(
            directory / "c-{epoch}.json", tolerances=[1, 3], keep_top_k=2, on_best=[Recorder()]
        )

    whole = make(tmp_path / "whole")
    drive(program, whole, values)

    first = make(tmp_path / "split")
    drive(program, first, values, stop=5)
    state = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    assert state["saved"] and state["best"] == 0.7 and state["best_path"] == "c-4.json"
    resumed = make(tmp_path / "split")
    resumed.load_state_dict(state)
    drive(program, resumed, values, start=5)

    assert files(tmp_path / "split") == files(tmp_path / "whole")
    assert tags(tmp_path / "split") == tags(tmp_path / "whole")
    assert resumed.state_dict() == whole.state_dict() | {"on_best": resumed.state_dict()["on_best"]}


def test_batch_counter_is_in_state(program: pf.Program, tmp_path: Path) -> None:
    cb = ProgramCheckpoint(tmp_path / "c-{epoch}-{batch}.json", monitor="reward", save_freq=3)

    async def run(cb: ProgramCheckpoint, batches: range) -> None:
        cb.set_program(program)
        for batch in batches:
            await cb.on_train_batch_end(batch, {"reward": 0.5})

    asyncio.run(run(cb, range(2)))
    assert cb.state_dict()["batches_seen"] == 2
    other = ProgramCheckpoint(tmp_path / "c-{epoch}-{batch}.json", monitor="reward", save_freq=3)
    other.load_state_dict(cb.state_dict())
    asyncio.run(run(other, range(2, 3)))
    assert files(tmp_path) == ["c-1-3.json"]


def test_get_config_round_trip(tmp_path: Path) -> None:
    cb = ProgramCheckpoint(
        tmp_path / "c-{epoch:03d}-{batch}.json",
        monitor="val_accuracy",
        verbose=1,
        save_best_only=True,
        save_variables_only=True,
        mode="max",
        save_freq=4,
        initial_value_threshold=0.5,
        keep_top_k=3,
        module_names=["answer"],
        tolerances=[5, 2],
        on_best=[EarlyStopping(monitor="best=val_accuracy/val_accuracy", mode="max")],
        strict=True,
    )
    config = json.loads(json.dumps(cb.get_config()))
    assert config["filepath"] == str(tmp_path / "c-{epoch:03d}-{batch}.json")
    assert config["tolerances"] == [2, 5]
    assert config["on_best"][0]["class_name"] == "EarlyStopping"
    rebuilt = ProgramCheckpoint.from_config(config)
    assert isinstance(rebuilt.on_best[0], EarlyStopping)
    assert rebuilt.get_config() == config
    default = ProgramCheckpoint("ckpt.json")
    assert ProgramCheckpoint.from_config(default.get_config()).get_config() == default.get_config()


# -- real fits on the fake server ----------------------------------------------------------


class SavedPaths(pf.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def on_checkpoint_saved(self, path: str, logs: dict[str, Any] | None = None) -> None:
        self.paths.append(path)


class SelfAware(ProgramCheckpoint):
    """A checkpoint that also listens to saves: it must not hear its own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heard: list[str] = []

    def on_checkpoint_saved(self, path: str, logs: dict[str, Any] | None = None) -> None:
        self.heard.append(path)


def test_real_fit_best_only_notifies_and_reloads(
    calc_program: Callable[..., Any], tmp_path: Path
) -> None:
    listener = SavedPaths()
    checkpoint = SelfAware(
        tmp_path / "ckpt-{epoch:02d}-{reward:.2f}.json", monitor="reward", save_best_only=True
    )
    other = SelfAware(tmp_path / "all" / "e{epoch}.json", monitor="reward")

    async def run() -> tuple[Any, dict[str, float]]:
        program = await calc_program("arith", min_examples=2)
        x, y = arithmetic_data(8)
        history = await program.fit(
            x,
            y,
            epochs=3,
            batch_size=4,
            verbose=0,
            seed=1,
            callbacks=[checkpoint, listener, other],
        )
        # Reload the best checkpoint; it talks to the fake server through the same client.
        lm = program.all_language_models()[0]
        loaded = pf.load_program(best_checkpoint(tmp_path) or "", language_models={lm.name: lm})
        loaded.compile(reward=pf.rewards.ExactMatch(in_mask=["answer"]))
        vx, vy = arithmetic_data(4, offset=50)
        return history, await loaded.evaluate(vx, vy, verbose=0)

    history, scores = asyncio.run(run())
    rewards = history.history["reward"]
    assert rewards[0] < 1.0 == rewards[1] == rewards[2]
    expected = [
        str(tmp_path / f"ckpt-01-{rewards[0]:.2f}.json"),
        str(tmp_path / "ckpt-02-1.00.json"),
    ]
    assert files(tmp_path) == ["all", *(Path(p).name for p in expected)]
    all_paths = [str(tmp_path / "all" / f"e{i}.json") for i in (1, 2, 3)]
    assert listener.paths == [expected[0], all_paths[0], expected[1], all_paths[1], all_paths[2]]
    assert checkpoint.heard == all_paths and other.heard == expected
    assert best_checkpoint(tmp_path) == expected[1]
    assert best_checkpoint(tmp_path / "all") == all_paths[1]  # tie on 1.0: the earlier wins
    assert scores["reward"] == 1.0


def test_real_fit_saves_every_n_batches(calc_program: Callable[..., Any], tmp_path: Path) -> None:
    checkpoint = ProgramCheckpoint(
        tmp_path / "b-{epoch}-{batch}.json", monitor="reward", save_freq=3, keep_top_k=1
    )

    async def run() -> None:
        program = await calc_program("arith")
        x, y = arithmetic_data(8)
        await program.fit(x, y, epochs=2, batch_size=2, verbose=0, seed=0, callbacks=[checkpoint])

    asyncio.run(run())
    # 4 batches per epoch: saves after the 3rd and the 6th batch (epoch 2, batch 2), and a
    # final save after the 8th; keep_top_k=1 keeps the best (the first) and the newest.
    entries = manifest_json(tmp_path)["checkpoints"]
    assert [(e["epoch"], e["batch"]) for e in entries] == [(1, 3), (2, 4)]
    assert files(tmp_path) == ["b-1-3.json", "b-2-4.json"]
    assert checkpoint.state_dict()["batches_seen"] == 0


class StopAtBatch(pf.callbacks.Callback):
    """Stop training after a given global batch (as a budget callback would)."""

    def __init__(self, global_batch: int) -> None:
        super().__init__()
        self.global_batch = global_batch
        self.seen = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.seen += 1
        if self.seen == self.global_batch:
            self.program.stop_training = True


class FailAtEpochEnd(pf.callbacks.Callback):
    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch == 1:
            raise RuntimeError("simulated failure")


@pytest.mark.parametrize(
    ("save_freq", "extra", "expected"),
    [
        # 3 batches per epoch, 2 epochs: saves after global batches 4, then the final one.
        (4, None, [(2, 1), (2, 3)]),
        # Saves after global batches 2, 4 and 6: the last batch was saved, no extra save.
        (2, None, [(1, 2), (2, 1), (2, 3)]),
        # Stopped after global batch 5 (epoch 2, batch 2): the final save is named after it.
        (4, StopAtBatch(5), [(2, 1), (2, 2)]),
        # A run that fails gets no final save (its backup, if any, is what resumes it).
        (4, FailAtEpochEnd(), [(2, 1)]),
    ],
)
def test_batch_saves_end_with_a_final_save(
    calc_program: Callable[..., Any],
    tmp_path: Path,
    save_freq: int,
    extra: pf.callbacks.Callback | None,
    expected: list[tuple[int, int]],
) -> None:
    checkpoint = ProgramCheckpoint(
        tmp_path / "b-{epoch}-{batch}.json", monitor="reward", save_freq=save_freq
    )
    listener = SavedPaths()

    async def run() -> pf.Program:
        program = await calc_program("arith")
        x, y = arithmetic_data(6)
        callbacks = [checkpoint, listener, *([extra] if extra is not None else [])]
        await program.fit(x, y, epochs=2, batch_size=2, verbose=0, seed=0, callbacks=callbacks)
        return program

    if isinstance(extra, FailAtEpochEnd):
        with pytest.raises(RuntimeError, match="simulated failure"):
            asyncio.run(run())
        entries = manifest_json(tmp_path)["checkpoints"]
        assert [(e["epoch"], e["batch"]) for e in entries] == expected
        return
    program = asyncio.run(run())
    entries = manifest_json(tmp_path)["checkpoints"]
    assert [(e["epoch"], e["batch"]) for e in entries] == expected
    last = tmp_path / "b-{}-{}.json".format(*expected[-1])
    assert listener.paths[-1] == str(last)  # the final save is announced like the others
    # The final file holds the program as training left it.
    assert pf.load_program(last).get_variables() == program.get_variables()


# -- a disk that refuses, paths that escape, a fit that starts late ----------------------------


def test_a_refused_write_warns_naming_the_path_and_training_goes_on(
    calc_program: Callable[..., Any], tmp_path: Path
) -> None:
    """The disk refuses epoch 2's file (a directory sits where it goes): one warning naming
    it, no manifest entry for it, and the fit runs its third epoch and saves it."""
    (tmp_path / "c-2.json").mkdir()
    checkpoint = ProgramCheckpoint(tmp_path / "c-{epoch}.json", monitor="reward")
    listener = SavedPaths()

    async def run() -> Any:
        program = await calc_program("arith", min_examples=2)
        x, y = arithmetic_data(6)
        return await program.fit(
            x, y, epochs=3, batch_size=3, verbose=0, seed=0, callbacks=[checkpoint, listener]
        )

    with pytest.warns(RuntimeWarning, match="could not write") as record:
        history = asyncio.run(run())
    assert len(record) == 1
    assert str(tmp_path / "c-2.json") in str(record[0].message)
    assert "training goes on" in str(record[0].message)
    assert history.epoch == [0, 1, 2]
    assert [e["path"] for e in manifest_json(tmp_path)["checkpoints"]] == ["c-1.json", "c-3.json"]
    assert listener.paths == [str(tmp_path / "c-1.json"), str(tmp_path / "c-3.json")]


def test_a_log_value_that_leads_outside_is_refused(program: pf.Program, tmp_path: Path) -> None:
    cb = ProgramCheckpoint(tmp_path / "run" / "{name}-{epoch}.json")
    with pytest.raises(CheckpointError, match="outside its directory") as info:
        drive(program, cb, [0.5], extra={"name": "../escaped"})
    assert str(tmp_path / "run") in str(info.value)
    assert not (tmp_path / "escaped-1.json").exists()


def test_a_symlinked_subdirectory_that_leads_outside_is_refused(
    program: pf.Program, tmp_path: Path
) -> None:
    """A field that names a symlinked sub-directory passes a lexical check; the real path does
    not, so no checkpoint is written (nor later deleted) outside the directory."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "link").symlink_to(outside, target_is_directory=True)
    cb = ProgramCheckpoint(tmp_path / "run" / "{where}" / "c-{epoch}.json")
    with pytest.raises(CheckpointError, match="outside"):
        drive(program, cb, [0.5], extra={"where": "link"})
    assert list(outside.iterdir()) == []


def test_a_template_that_climbs_out_is_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"'\.\.'"):
        ProgramCheckpoint(tmp_path / "run" / "e{epoch}" / ".." / ".." / "c.json")
    # '..' before the first field only moves the directory that holds the manifest.
    cb = ProgramCheckpoint(str(tmp_path / "run" / ".." / "other" / "c-{epoch}.json"))
    assert cb.directory == Path(str(tmp_path / "run" / ".." / "other"))


@pytest.mark.parametrize("save_freq", ["epoch", 2])
def test_initial_epoch_names_and_records_the_real_epochs(
    calc_program: Callable[..., Any], tmp_path: Path, save_freq: str | int
) -> None:
    template = "c-{epoch}.json" if save_freq == "epoch" else "c-{epoch}-{batch}.json"
    checkpoint = ProgramCheckpoint(
        tmp_path / template, monitor="reward", save_freq=save_freq, keep_top_k=5
    )

    async def run() -> Any:
        program = await calc_program("arith", min_examples=2)
        x, y = arithmetic_data(6)
        return await program.fit(
            x,
            y,
            epochs=4,
            initial_epoch=2,
            batch_size=2,
            verbose=0,
            seed=0,
            callbacks=[checkpoint],
        )

    history = asyncio.run(run())
    assert history.epoch == [2, 3]
    entries = manifest_json(tmp_path)["checkpoints"]
    if save_freq == "epoch":
        assert [(e["epoch"], e["batch"]) for e in entries] == [(3, None), (4, None)]
        assert files(tmp_path) == ["c-3.json", "c-4.json"]
    else:
        # 3 batches per epoch from epoch 3 on: saves after 2, 4 and 6 batches.
        assert [(e["epoch"], e["batch"]) for e in entries] == [(3, 2), (4, 1), (4, 3)]
        assert files(tmp_path) == ["c-3-2.json", "c-4-1.json", "c-4-3.json"]
    assert latest_checkpoint(tmp_path) == str(tmp_path / files(tmp_path)[-1])
