"""CSVLogger: one durable row per epoch, a stable header, and no duplicates after a resume.

Why: the CSV log is what people plot and compare after a run, so it must read cleanly with
pandas (``NA`` for missing values, any separator), keep its columns stable, survive a crash up
to the last finished epoch, and -- with BackupAndRestore -- never show an epoch twice when a
crashed run is resumed (rows written after the last backup are dropped and written again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from promptfit.callbacks.backup_and_restore import BackupAndRestore
from promptfit.callbacks.callback import Callback
from promptfit.callbacks.csv_logger import CSVLogger
from promptfit.errors import BackupMismatchError, ConfigurationError
from tests.conftest import arithmetic_data


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _epochs(logger: CSVLogger, logs: list[dict[str, Any]], start: int = 0) -> None:
    for offset, row in enumerate(logs):
        logger.on_epoch_begin(start + offset)
        logger.on_epoch_end(start + offset, row)


def test_epoch_first_sorted_keys_and_na_for_missing(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "log.csv"
    logger = CSVLogger(path)
    logger.on_train_begin()
    _epochs(logger, [{"val_reward": None, "reward": 0.5, "lm_calls": 3}])
    # Written (and fsynced) at once: a crash now keeps the row.
    assert _lines(path) == ["epoch,lm_calls,reward,val_reward", "0,3,0.5,NA"]
    _epochs(logger, [{"reward": 1.0, "val_reward": 0.25}], start=1)
    logger.on_train_end()
    assert _lines(path) == ["epoch,lm_calls,reward,val_reward", "0,3,0.5,NA", "1,NA,1.0,0.25"]
    frame = pd.read_csv(path)
    assert list(frame["epoch"]) == [0, 1]
    assert pd.isna(frame["val_reward"][0]) and pd.isna(frame["lm_calls"][1])


def test_a_new_key_extends_the_header_with_na_in_earlier_rows(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    logger = CSVLogger(path)
    logger.on_train_begin()
    _epochs(logger, [{"reward": 0.5}, {"reward": 0.75, "val_reward": 0.5, "accuracy": 1.0}])
    assert _lines(path) == [
        "epoch,reward,accuracy,val_reward",
        "0,0.5,NA,NA",
        "1,0.75,1.0,0.5",
    ]


@pytest.mark.parametrize("separator", [";", "\t", "|"])
def test_separator(tmp_path: Path, separator: str) -> None:
    path = tmp_path / "log.csv"
    logger = CSVLogger(path, separator=separator)
    logger.on_train_begin()
    _epochs(logger, [{"reward": 0.5, "note": f"a{separator}b"}])
    frame = pd.read_csv(path, sep=separator)
    assert list(frame.columns) == ["epoch", "note", "reward"]
    assert frame["note"][0] == f"a{separator}b"  # quoted, not split
    assert frame["reward"][0] == 0.5


def test_append_false_starts_fresh_and_append_true_continues(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("epoch,z,a\n0,1,2\n")
    fresh = CSVLogger(path)
    fresh.on_train_begin()
    _epochs(fresh, [{"a": 7}])
    assert _lines(path) == ["epoch,a", "0,7"]

    path.write_text("epoch,z,a\n0,1,2\n")
    appended = CSVLogger(path, append=True)
    appended.on_train_begin()
    _epochs(appended, [{"a": 5, "z": 6}], start=1)
    # The existing header (and its column order) is reused.
    assert _lines(path) == ["epoch,z,a", "0,1,2", "1,6,5"]


def test_append_drops_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("epoch,a\n0,1\n1,")  # a crash in the middle of writing row 1
    logger = CSVLogger(path, append=True)
    logger.on_train_begin()
    _epochs(logger, [{"a": 2}], start=1)
    assert _lines(path) == ["epoch,a", "0,1", "1,2"]


@pytest.mark.parametrize("restore_first", [False, True])
def test_restored_state_cuts_rows_written_after_the_backup(
    tmp_path: Path, restore_first: bool
) -> None:
    path = tmp_path / "log.csv"
    crashed = CSVLogger(path)
    crashed.on_train_begin()
    _epochs(crashed, [{"a": 0}, {"a": 1}])
    backup = crashed.state_dict()
    # After the backup, the crashed run wrote one more epoch, with a new key.
    _epochs(crashed, [{"a": 2, "b": 9}], start=2)
    assert _lines(path)[0] == "epoch,a,b"

    resumed = CSVLogger(path)  # append=False: a resume still keeps the backed-up rows
    if restore_first:
        resumed.load_state_dict(backup)
        resumed.on_train_begin()
    else:
        resumed.on_train_begin()
        resumed.load_state_dict(backup)
    resumed.on_epoch_begin(2)
    assert _lines(path) == ["epoch,a", "0,0", "1,1"]
    resumed.on_epoch_end(2, {"a": 2, "b": 9})
    assert _lines(path) == ["epoch,a,b", "0,0,NA", "1,1,NA", "2,2,9"]


def test_bad_arguments_and_config(tmp_path: Path) -> None:
    for separator in ("", ",,", '"', "\n"):
        with pytest.raises(ConfigurationError, match="separator"):
            CSVLogger(tmp_path / "log.csv", separator=separator)
    with pytest.raises(ConfigurationError, match="filepath"):
        CSVLogger("")
    logger = CSVLogger(tmp_path / "log.csv", separator=";", append=True)
    config = logger.get_config()
    assert config == {"filepath": str(tmp_path / "log.csv"), "separator": ";", "append": True}
    assert CSVLogger.from_config(config).get_config() == config


class Boom(RuntimeError):
    pass


class CrashAfterRow(Callback):
    """Crash at an epoch end after CSVLogger wrote the row but before the backup is saved."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch
        self.armed = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.armed and epoch == self.epoch:
            raise Boom(f"crash at the end of epoch {epoch}")


def test_resumed_fit_writes_each_epoch_once(
    calc_program: Callable[..., Any], tmp_path: Path
) -> None:
    path = tmp_path / "log.csv"
    backup_dir = tmp_path / "backup"
    crash = CrashAfterRow(epoch=1)
    x, y = arithmetic_data(6)

    async def run(epochs: int = 3) -> Any:
        program = await calc_program("arith", min_examples=2, tag="csv-resume")
        callbacks = [BackupAndRestore(backup_dir), CSVLogger(path), crash]
        return await program.fit(
            x,
            y,
            epochs=epochs,
            batch_size=3,
            validation_split=0.34,
            seed=1,
            verbose=0,
            callbacks=callbacks,
        )

    with pytest.raises(Boom):
        asyncio.run(run())
    assert [line.split(",")[0] for line in _lines(path)[1:]] == ["0", "1"]  # row 1 orphaned
    crashed_log = path.read_text()

    # A refused resume (different epochs) leaves the log untouched.
    with pytest.raises(BackupMismatchError):
        asyncio.run(run(epochs=4))
    assert path.read_text() == crashed_log

    crash.armed = False
    history = asyncio.run(run())
    frame = pd.read_csv(path)
    assert list(frame["epoch"]) == [0, 1, 2]
    assert list(frame["reward"]) == pytest.approx(history.history["reward"])
    assert list(frame["val_reward"]) == pytest.approx(history.history["val_reward"])


def test_append_true_with_a_resume_keeps_earlier_runs_rows(
    calc_program: Callable[..., Any], tmp_path: Path
) -> None:
    """append=True across runs, one of which crashes and resumes from a backup.

    The backup counts the rows of the earlier run too, so the resume cuts the file back to
    exactly the rows known at backup time: the earlier run's rows stay, the crashed run's
    orphaned row goes, and each of its epochs appears once.
    """
    path = tmp_path / "log.csv"
    backup_dir = tmp_path / "backup"
    crash = CrashAfterRow(epoch=1)
    x, y = arithmetic_data(6)

    async def run(callbacks: list[Any]) -> Any:
        program = await calc_program("arith", tag="csv-append-resume")
        return await program.fit(
            x, y, epochs=3, batch_size=3, validation_split=0.34, seed=1, verbose=0,
            callbacks=[CSVLogger(path, append=True), *callbacks],
        )  # fmt: skip

    earlier = asyncio.run(run([]))
    assert [line.split(",")[0] for line in _lines(path)[1:]] == ["0", "1", "2"]
    earlier_rows = _lines(path)[1:]
    with pytest.raises(Boom):
        asyncio.run(run([BackupAndRestore(backup_dir), crash]))
    # The earlier run's 3 rows, then epochs 0 and 1 of the crashed run (1 after its backup).
    assert [line.split(",")[0] for line in _lines(path)[1:]] == ["0", "1", "2", "0", "1"]
    crash.armed = False
    resumed = asyncio.run(run([BackupAndRestore(backup_dir), crash]))
    lines = _lines(path)
    assert lines[0].startswith("epoch,")
    assert lines[1:4] == earlier_rows
    assert [line.split(",")[0] for line in lines[4:]] == ["0", "1", "2"]
    frame = pd.read_csv(path)
    assert list(frame["val_reward"][3:]) == pytest.approx(resumed.history["val_reward"])
    assert list(frame["val_reward"][:3]) == pytest.approx(earlier.history["val_reward"])
