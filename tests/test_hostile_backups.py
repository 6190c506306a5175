"""Hostile backups and manifests (issue 11, items 2 and 7).

A backup directory is made by a real fit that crashes after its first epoch; a test then edits
the backup (or the checkpoint manifest) the way a broken disk or an attacker would, and
resumes. Every edit must end in a CheckpointError that names the file and says to delete it,
before any LM call, without touching files outside the run.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import promptfit as pf
from promptfit.callbacks import Callback
from promptfit.callbacks.backup_and_restore import BackupAndRestore
from promptfit.checkpoints import best_checkpoint
from promptfit.errors import CheckpointError, PromptfitError
from promptfit.testing import FakeLLMServer
from tests.conftest import Answer, Query, arithmetic_data


class Boom(RuntimeError):
    """The simulated crash."""


class CrashAt(Callback):
    def __init__(self, epoch: int | None) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch == self.epoch:
            raise Boom(f"crash at the end of epoch {epoch}")


async def _program(server: FakeLLMServer) -> pf.Program:
    lm = pf.LanguageModel(
        model=FakeLLMServer.model("arith", min_examples=1, tag="hostile-backups"),
        api_base=server.base_url,
        api_key="sk-fake",
        cache=False,
    )
    inputs = pf.Input(data_model=Query)
    outputs = await pf.Generator(data_model=Answer, language_model=lm, name="answer")(inputs)
    program = pf.Program(inputs=inputs, outputs=outputs, name="calc")
    program.compile(
        reward=pf.rewards.ExactMatch(),
        optimizer=pf.optimizers.RandomFewShot(k=1),
        metrics=[pf.metrics.Accuracy(), pf.metrics.F1Score()],
    )
    return program


def _callbacks(run: Path, crash: int | None) -> list[Callback]:
    return [
        pf.callbacks.CSVLogger(run / "log.csv"),
        pf.callbacks.ProgramCheckpoint(
            str(run / "ckpt" / "e{epoch}.json"), monitor="reward", keep_top_k=1
        ),
        pf.callbacks.EarlyStopping(monitor="reward", patience=5),
        CrashAt(crash),
        BackupAndRestore(run / "backup"),
    ]


def _fit(server: FakeLLMServer, run: Path, crash: int | None) -> pf.Program | None:
    """Fit 3 epochs in ``run``; ``None`` when the run crashed (``crash`` = epoch index)."""

    async def go() -> pf.Program:
        program = await _program(server)
        x, y = arithmetic_data(4)
        await program.fit(
            x, y, epochs=3, batch_size=2, verbose=0, seed=3, callbacks=_callbacks(run, crash)
        )
        return program

    try:
        return asyncio.run(go())
    except Boom:
        return None


@pytest.fixture()
def crashed_run(llm_server: FakeLLMServer, tmp_path: Path) -> Path:
    """A run directory whose fit crashed after epoch 1: backup, manifest, CSV log."""
    run = tmp_path / "run"
    _fit(llm_server, run, crash=1)
    assert (run / "backup" / "backup.json").exists()
    return run


def _edit_backup(run: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    path = run / "backup" / "backup.json"
    payload = json.loads(path.read_text())
    edit(payload["fit_state"])
    path.write_text(json.dumps(payload))


def _callback_state(fit_state: dict[str, Any], name: str) -> dict[str, Any]:
    (key,) = [k for k in fit_state["callbacks"] if k.endswith(f":{name}")]
    return fit_state["callbacks"][key]


def _resume_refused(server: FakeLLMServer, run: Path) -> CheckpointError:
    """Resume; the error must come before any LM call and name the backup."""
    log_before = (run / "log.csv").read_bytes()
    programs: list[pf.Program] = []

    async def go() -> None:
        program = await _program(server)
        programs.append(program)
        x, y = arithmetic_data(4)
        await program.fit(
            x, y, epochs=3, batch_size=2, verbose=0, seed=3, callbacks=_callbacks(run, None)
        )

    with pytest.raises(CheckpointError) as caught:
        asyncio.run(go())
    (lm,) = programs[0].language_models
    assert lm.usage.calls == 0, "an LM call was paid before the backup was refused"
    assert (run / "log.csv").read_bytes() == log_before
    return caught.value


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(state: dict[str, Any]) -> None:
        node = state
        for key in path[:-1]:
            node = _callback_state(node, key[1:]) if str(key).startswith("@") else node[key]
        node[path[-1]] = value

    return apply


BAD_BACKUPS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("epoch -5", _set(["epoch"], -5)),
    ("epoch 10**6", _set(["epoch"], 10**6)),
    ("step 10**6", _set(["step"], 10**6)),
    ("step as string", _set(["step"], "1")),
    ("stop_training 'no'", _set(["stop_training"], "no")),
    ("seed true", _set(["seed"], True)),
    ("reward_total string", _set(["reward_total"], "x")),
    ("reward_total inf", _set(["reward_total"], float("inf"))),
    ("reward_count negative", _set(["reward_count"], -1)),
    ("usage negative", _set(["epoch_usage_start", "calls"], -3)),
    ("usage unknown counter", _set(["epoch_usage_start", "evil"], 1)),
    ("CSV header 'abc'", _set(["@CSVLogger", "header"], "abc")),
    ("CSV rows_written -1", _set(["@CSVLogger", "rows_written"], -1)),
    ("CSV header of other columns", _set(["@CSVLogger", "header"], ["a", "b", "c"])),
    ("CSV header reordered", _set(["@CSVLogger", "header"], ["reward", "epoch"])),
    ("metric renamed", _set(["metrics", "accuracy", "name"], "evil")),
    ("metric mask changed", _set(["metrics", "accuracy", "in_mask"], ["question"])),
    ("metric count string", _set(["metrics", "accuracy", "count"], "7")),
    ("f1 counts negative", _set(["metrics", "f1_score", "tp"], {"a": -1})),
    ("checkpoint saved ../x", _set(["@ProgramCheckpoint", "saved"], ["../x.json"])),
    ("checkpoint best string", _set(["@ProgramCheckpoint", "best"], "high")),
    ("early stopping wait -1", _set(["@EarlyStopping", "wait"], -1)),
    ("history epoch string", _set(["@History", "epoch"], "abc")),
    ("optimizer not an object", _set(["optimizer"], "x")),
    ("optimizer rng garbage", _set(["optimizer", "rng"], [1, 2])),
    # Found by test_fuzz_files on a fresh venv: a null counter crashed the resumed search
    # after its first LM calls instead of refusing the backup.
    ("optimizer calls_measured null", _set(["optimizer", "calls_measured"], None)),
    ("optimizer examples_measured -1", _set(["optimizer", "examples_measured"], -1)),
    ("callbacks not objects", _set(["callbacks"], {"1:CSVLogger": []})),
    ("variables not an object", _set(["variables"], [])),
    ("variable of the wrong shape", _set(["variables", "answer/examples"], "no")),
    # Found in the issue 11 audit: values installed or returned only at the end of a fit.
    ("EarlyStopping best_variables wrong shape", _set(["@EarlyStopping", "best_variables"],
                                                      {"answer/prompt": "no"})),
    ("EarlyStopping best_variables unknown", _set(["@EarlyStopping", "best_variables"],
                                                  {"evil/x": {}})),
    ("History reward 'x'", _set(["@History", "history", "reward"], ["x"])),
    ("History column longer than its epochs", _set(["@History", "history", "reward"],
                                                   [1.0, 2.0, 3.0])),
    ("optimizer validated garbage", _set(["optimizer", "validated"],
                                         {"k": {"variables": {"answer/prompt": "no"},
                                                "val_reward": 1.0}})),
    ("optimizer epoch_incumbents garbage", _set(["optimizer", "epoch_incumbents"],
                                                {"k": {"answer/prompt": 5}})),
    ("optimizer race variables garbage", _set(["optimizer", "races"],
                                              [{"key": "k", "variables": {"answer/prompt": 1}}])),
]  # fmt: skip


@pytest.mark.parametrize(("name", "edit"), BAD_BACKUPS, ids=[n for n, _ in BAD_BACKUPS])
def test_invalid_backup_values_are_refused_before_any_lm_call(
    llm_server: FakeLLMServer, crashed_run: Path, name: str, edit: Callable[[dict[str, Any]], None]
) -> None:
    _edit_backup(crashed_run, edit)
    error = _resume_refused(llm_server, crashed_run)
    assert str(crashed_run / "backup" / "backup.json") in str(error)
    assert "Delete" in str(error)


def test_an_untouched_backup_still_resumes(llm_server: FakeLLMServer, crashed_run: Path) -> None:
    program = _fit(llm_server, crashed_run, crash=None)
    assert program is not None and program.history.epoch == [0, 1, 2]


def test_a_metric_state_cannot_rename_the_metric() -> None:
    metric = pf.metrics.MeanReward()
    with pytest.raises(ValueError, match="changes its 'name'"):
        metric.load_state_dict({**metric.state_dict(), "name": "evil"})
    assert metric.name == "mean_reward"


# -- item 2: symlinks --------------------------------------------------------------------------
def test_keep_top_k_never_deletes_through_a_symlinked_directory(
    llm_server: FakeLLMServer, crashed_run: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.json"
    victim.write_text("precious")
    ckpt = crashed_run / "ckpt"
    (ckpt / "sub").symlink_to(outside, target_is_directory=True)
    manifest = json.loads((ckpt / "checkpoints.json").read_text())
    entry = dict(manifest["checkpoints"][0], path="sub/victim.json", value=-1.0, tags=[])
    manifest["checkpoints"].insert(0, entry)
    (ckpt / "checkpoints.json").write_text(json.dumps(manifest))
    _edit_backup(
        crashed_run,
        lambda s: _callback_state(s, "ProgramCheckpoint")["saved"].insert(0, "sub/victim.json"),
    )
    error = _resume_refused(llm_server, crashed_run)
    assert "outside" in str(error)
    assert victim.read_text() == "precious"
    # Readers refuse the entry too instead of handing out a path outside the directory.
    with pytest.raises(CheckpointError, match="outside"):
        best_checkpoint(ckpt)


def test_a_checkpoint_symlink_loses_the_link_not_its_target(tmp_path: Path) -> None:
    from promptfit.checkpoints.manifest import CheckpointManifest

    outside = tmp_path / "outside.json"
    outside.write_text("precious")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "link.json").symlink_to(outside)
    manifest = CheckpointManifest(ckpt)
    manifest.unlink_entry_file({"path": "link.json"})
    assert outside.read_text() == "precious" and not (ckpt / "link.json").exists()


# -- FIFOs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["backup.json", "checkpoints.json"])
def test_a_fifo_in_place_of_a_run_file_does_not_block(tmp_path: Path, name: str) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    os.mkfifo(directory / name)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            if name == "backup.json":
                BackupAndRestore(directory, double_checkpoint=False)._read_backup()
            else:
                best_checkpoint(directory)
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():
        with open(os.open(directory / name, os.O_WRONLY | os.O_NONBLOCK), "w"):
            pass
        pytest.fail(f"reading a FIFO named {name} blocked")
    assert isinstance(outcome[0], PromptfitError)
    assert "not a regular file" in str(outcome[0])


@pytest.mark.parametrize(
    "edit",
    [
        {"tags": 5},
        {"metrics": []},
        {"mode": "sideways"},
        {"path": "../outside.json"},
    ],
    ids=["tags", "metrics", "mode", "path"],
)
def test_a_damaged_manifest_fails_before_any_lm_call(
    llm_server: FakeLLMServer, crashed_run: Path, edit: dict[str, Any]
) -> None:
    path = crashed_run / "ckpt" / "checkpoints.json"
    manifest = json.loads(path.read_text())
    manifest["checkpoints"][0].update(edit)
    path.write_text(json.dumps(manifest))
    error = _resume_refused(llm_server, crashed_run)
    assert str(path) in str(error) and "Delete" in str(error)
