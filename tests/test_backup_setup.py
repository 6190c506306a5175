"""BackupAndRestore refuses a resume set up differently, warns on what it cannot restore, and
cleans up after itself.

Why these tests: a backup applied to a run configured differently mixes two experiments in one
history without a word. The data, epochs and batch size were checked before; these tests cover
what was not: the optimizer (``RandomFewShot`` swapped for ``InstructionOptimizer`` used to
resume silently), its settings, an explicit seed, the language models, and the validation data.
Each case crashes a real fit on the test server, changes one thing, and checks that the resume
is refused with the difference named, the fix given and the backup left untouched. Backups of
an older promptfit (without these fields) must still resume, with a warning. The warnings for
a changed callback list and a missing latest backup, and the removal of temporary files a
killed write left behind, are checked through real fits too.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import promptfit as pf
from promptfit.callbacks.callback import Callback
from promptfit.errors import BackupMismatchError
from promptfit.testing import FakeLLMServer
from tests.conftest import Answer, Query, arithmetic_data


class Boom(RuntimeError):
    """The simulated crash."""


class CrashAt(Callback):
    """Raise at the end of an epoch while armed (runs before BackupAndRestore, as fit orders)."""

    def __init__(self, epoch: int | None = None) -> None:
        super().__init__()
        self.epoch = epoch
        self.armed = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.armed and epoch == self.epoch:
            raise Boom(f"crash at the end of epoch {epoch}")


class Counter(Callback):
    """A callback with state, so the callback list of a backup records it."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epochs += 1

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs = int(state["epochs"])


@pytest.fixture()
def build(llm_server: FakeLLMServer) -> Callable[..., Any]:
    """An async factory of the arithmetic program; the same model string in every run."""

    def lm(tag: str) -> pf.LanguageModel:
        return pf.LanguageModel(
            model=FakeLLMServer.model("arith", min_examples=2, tag=tag),
            api_base=llm_server.base_url,
            api_key="sk-fake",
        )

    async def factory(optimizer: str = "random", k: int = 2, tag: str = "setup") -> pf.Program:
        inputs = pf.Input(data_model=Query)
        outputs = await pf.Generator(
            data_model=Answer,
            language_model=lm(tag),
            instructions="Answer with a number.",
            name="answer",
        )(inputs)
        program = pf.Program(inputs=inputs, outputs=outputs, name="calc")
        chosen: pf.optimizers.Optimizer = (
            pf.optimizers.RandomFewShot(k=k)
            if optimizer == "random"
            else pf.optimizers.InstructionOptimizer(language_model=lm(tag))
        )
        program.compile(reward=pf.rewards.ExactMatch(in_mask=["answer"]), optimizer=chosen)
        return program

    return factory


def _fit(program: pf.Program, callbacks: list[Callback], **changes: Any) -> Any:
    x, y = arithmetic_data(8)
    kwargs: dict[str, Any] = {
        "epochs": 3,
        "batch_size": 2,
        "validation_data": arithmetic_data(4, offset=40),
        "seed": 5,
        "verbose": 0,
    }
    kwargs.update(changes)
    return program.fit(x, y, callbacks=callbacks, **kwargs)


@pytest.fixture()
def crashed(build: Callable[..., Any], tmp_path: Path) -> Path:
    """A backup left by a run that crashed at the end of epoch 1 (saved after epoch 0)."""
    backup_dir = tmp_path / "backup"

    async def run() -> None:
        await _fit(await build(), [pf.callbacks.BackupAndRestore(backup_dir), CrashAt(epoch=1)])

    with pytest.raises(Boom):
        asyncio.run(run())
    assert (backup_dir / "backup.json").exists()
    return backup_dir


@pytest.mark.parametrize(
    ("program_change", "fit_change", "named"),
    [
        ({"optimizer": "instruction"}, {}, "optimizer (backup: RandomFewShot, now: Instruction"),
        ({"k": 3}, {}, "RandomFewShot settings: k (backup: 2, now: 3)"),
        ({"tag": "other"}, {}, "language models (backup: ['openai/arith?min_examples=2&tag=se"),
        ({}, {"seed": 6}, "seed (backup: 5, now: 6)"),
        ({}, {"validation_data": arithmetic_data(4, offset=60)}, "validation data (backup"),
    ],
)
def test_a_resume_set_up_differently_is_refused(
    build: Callable[..., Any],
    crashed: Path,
    program_change: dict[str, Any],
    fit_change: dict[str, Any],
    named: str,
) -> None:
    before = (crashed / "backup.json").read_bytes()

    async def run() -> pf.Program:
        program = await build(**program_change)
        await _fit(program, [pf.callbacks.BackupAndRestore(crashed)], **fit_change)
        return program

    with pytest.raises(BackupMismatchError) as info:
        asyncio.run(run())
    message = str(info.value)
    assert named in message
    assert str(crashed / "backup.json") in message and "delete" in message
    # Only the changed component is named.
    others = ["optimizer (", "settings:", "language models (", "seed (", "validation data ("]
    assert sum(part in message for part in others) == 1, message
    assert (crashed / "backup.json").read_bytes() == before  # a refused backup is left alone


def test_seed_none_resumes_with_the_backups_seed(build: Callable[..., Any], crashed: Path) -> None:
    async def run() -> Any:
        return await _fit(await build(), [pf.callbacks.BackupAndRestore(crashed)], seed=None)

    history = asyncio.run(run())
    assert history.epoch == [0, 1, 2]
    assert not crashed.exists()


def test_the_backup_records_the_setup_without_credentials(crashed: Path) -> None:
    fingerprint = json.loads((crashed / "backup.json").read_text())["fit_state"]["fingerprint"]
    assert fingerprint["optimizer"] == "RandomFewShot"
    assert fingerprint["optimizer config"]["k"] == 2
    assert fingerprint["language models"] == ["openai/arith?min_examples=2&tag=setup"]
    assert "sk-fake" not in (crashed / "backup.json").read_text()


def test_an_older_backup_without_the_setup_resumes_with_a_warning(
    build: Callable[..., Any], crashed: Path
) -> None:
    payload = json.loads((crashed / "backup.json").read_text())
    for key in ("optimizer", "optimizer config", "language models"):
        del payload["fit_state"]["fingerprint"][key]
    (crashed / "backup.json").write_text(json.dumps(payload))

    async def run() -> Any:
        # Even with another optimizer: an old backup cannot tell, so it warns and resumes.
        return await _fit(
            await build(optimizer="random", k=3), [pf.callbacks.BackupAndRestore(crashed)]
        )

    with pytest.warns(RuntimeWarning, match="older promptfit.*optimizer, optimizer config"):
        history = asyncio.run(run())
    assert history.epoch == [0, 1, 2]


def test_changed_callbacks_warn_and_start_fresh(build: Callable[..., Any], tmp_path: Path) -> None:
    backup_dir = tmp_path / "backup"
    counter = Counter()
    crash = CrashAt(epoch=1)

    async def run(callbacks: list[Callback]) -> Any:
        return await _fit(await build(), [pf.callbacks.BackupAndRestore(backup_dir), *callbacks])

    with pytest.raises(Boom):
        asyncio.run(run([counter, crash]))
    fresh = Counter()
    with pytest.warns(RuntimeWarning, match="callbacks differ") as record:
        history = asyncio.run(run([CrashAt(), fresh]))  # the Counter moved one place
    message = str(record[0].message)
    assert "in the backup only: ['1:Counter']" in message and "new: ['2:Counter']" in message
    assert history.epoch == [0, 1, 2]
    assert fresh.epochs == 2  # not restored (it would be 3): it started from scratch


def test_a_missing_latest_backup_falls_back_to_the_previous_one(
    build: Callable[..., Any], tmp_path: Path
) -> None:
    backup_dir = tmp_path / "backup"
    crash = CrashAt(epoch=2)

    async def run() -> tuple[Any, pf.Program]:
        program = await build()
        backup = pf.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True)
        return await _fit(program, [backup, crash], epochs=4), program

    reference, ref_program = asyncio.run(_reference(build))
    with pytest.raises(Boom):
        asyncio.run(run())
    (backup_dir / "backup.json").unlink()
    previous = json.loads((backup_dir / "backup.prev.json").read_text())["fit_state"]
    assert previous["epoch"] == 1  # one epoch older than the deleted latest
    crash.armed = False
    with pytest.warns(RuntimeWarning, match=r"backup\.json is missing; resuming from the previous"):
        history, program = asyncio.run(run())
    assert history.epoch == [0, 1, 2, 3]
    assert history.history["reward"] == reference.history["reward"]
    assert program.get_variables() == ref_program.get_variables()


async def _reference(build: Callable[..., Any]) -> tuple[Any, pf.Program]:
    program = await build()
    return await _fit(program, [], epochs=4), program


def test_stale_temporary_files_are_removed_with_the_backup(
    build: Callable[..., Any], crashed: Path
) -> None:
    # What a write killed between its temporary file and the rename leaves behind.
    stale = [crashed / ".backup.json.k1l2e3d4.tmp", crashed / ".backup.prev.json.a9b8.tmp"]
    for path in stale:
        path.write_text('{"format": "promptfit.backup", "vers')
    keep = crashed / "notes.txt"
    keep.write_text("a user's file is never deleted")

    async def run() -> Any:
        return await _fit(await build(), [pf.callbacks.BackupAndRestore(crashed)])

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        history = asyncio.run(run())
    assert history.epoch == [0, 1, 2]
    assert sorted(p.name for p in crashed.iterdir()) == ["notes.txt"]
