"""A log file that cannot be written never ends training, and loses nothing it can save.

Why: CSVLogger and PredictionLogger help people read a run; a full disk or a vanished mount
under the log must not throw away a fit that has already spent money. The failure is real:
a directory stands where the log file should be, so every open/replace of the file fails with
an OSError even for root (file permissions would not stop root, which CI may run as).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from promptfit.callbacks.callback import Callback
from promptfit.callbacks.csv_logger import CSVLogger
from promptfit.callbacks.prediction_logger import PredictionLogger
from tests.conftest import arithmetic_data


class ClearPathAfterEpoch(Callback):
    """Removes the directory blocking ``path`` at the end of ``epoch`` (the disk 'recovers')."""

    def __init__(self, path: Path, epoch: int) -> None:
        super().__init__()
        self.path, self.epoch = path, epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch == self.epoch:
            shutil.rmtree(self.path)


def _fit(program: Any, callbacks: list[Callback], epochs: int = 3) -> Any:
    x, y = arithmetic_data(6)
    return asyncio.run(
        program.fit(
            x[:4], y[:4], epochs=epochs, batch_size=2, verbose=0,
            validation_data=(x[4:], y[4:]), callbacks=callbacks,
        )
    )  # fmt: skip


def _failures(records: list[warnings.WarningMessage], owner: str) -> list[str]:
    return [str(r.message) for r in records if str(r.message).startswith(owner)]


def test_csv_logger_keeps_rows_until_the_file_is_writable_again(
    calc_program: Callable[..., Any], tmp_path: Path
) -> None:
    path = tmp_path / "log.csv"
    path.mkdir()  # the file cannot be created until this is gone
    program = asyncio.run(calc_program())
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        # The clearing callback runs first, so epoch 1's row is written in the same hook.
        history = _fit(program, [ClearPathAfterEpoch(path, 1), CSVLogger(path)])
    assert len(history.epoch) == 3
    failures = _failures(records, "CSVLogger")
    assert len(failures) == 1, failures  # one warning for the whole outage
    assert "IsADirectoryError" in failures[0] and "Training continues" in failures[0]
    frame = pd.read_csv(path)
    assert list(frame["epoch"]) == [0, 1, 2]  # the rows of the failed epochs were kept
    assert list(frame["reward"]) == history.history["reward"]
    assert path.read_text().count("epoch") == 1  # one header, no torn or repeated lines


def test_csv_logger_that_never_recovers_reports_the_lost_rows(
    calc_program: Callable[..., Any], tmp_path: Path
) -> None:
    path = tmp_path / "log.csv"
    path.mkdir()
    program = asyncio.run(calc_program())
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        history = _fit(program, [CSVLogger(path)], epochs=2)
    assert len(history.epoch) == 2 and history.history["val_reward"]
    failures = _failures(records, "CSVLogger")
    assert len(failures) == 2, failures  # the outage, then what was lost at the end
    assert "2 row(s) (epochs [0, 1]" in failures[1] and "are lost" in failures[1]
    assert path.is_dir() and not any(path.iterdir())  # nothing half-written in its place


def test_prediction_logger_keeps_records_until_the_file_is_writable_again(
    calc_program: Callable[..., Any], tmp_path: Path
) -> None:
    path = tmp_path / "predictions.jsonl"
    path.mkdir()
    logger = PredictionLogger(path, num_samples=2, seed=3)
    program = asyncio.run(calc_program())
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        history = _fit(program, [ClearPathAfterEpoch(path, 1), logger])
    assert len(history.epoch) == 3
    failures = _failures(records, "PredictionLogger")
    assert len(failures) == 1 and "Training continues" in failures[0], failures
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 0, 1, 1, 2, 2]
    assert logger.state_dict() == {"epochs_logged": [0, 1, 2], "lines": 6}
