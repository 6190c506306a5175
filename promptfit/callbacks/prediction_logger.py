"""``PredictionLogger``: write the program's answers on a few fixed examples every n epochs."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from promptfit.callbacks._checks import check_int
from promptfit.callbacks._log_files import LogWriteGuard
from promptfit.callbacks.callback import Callback
from promptfit.errors import ConfigurationError
from promptfit.saving.atomic import durable_append_text
from promptfit.training.context import FitContext

__all__ = ["PredictionLogger"]


def _jsonable(value: Any) -> Any:
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def _complete_lines(path: Path) -> list[tuple[int, bytes]]:
    """``(end offset, line)`` of every newline-terminated line; a torn last line is left out."""
    if not path.exists():
        return []
    lines: list[tuple[int, bytes]] = []
    offset = 0
    with path.open("rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break
            offset += len(line)
            lines.append((offset, line))
    return lines


def _truncate(path: Path, size: int) -> None:
    if not path.exists() or path.stat().st_size == size:
        return
    with path.open("r+b") as handle:
        handle.truncate(size)
        handle.flush()
        os.fsync(handle.fileno())


class PredictionLogger(Callback):
    """Log what the program answers on the same few examples as training goes on.

    Rewards say *that* a prompt got better; reading the answers says *how*. At the end of every
    ``every_n_epochs``-th epoch, the callback runs the program on ``num_samples`` examples of
    the validation data (the training data when there is none), drawn once from ``seed`` so
    every logged epoch shows the same examples, and appends one JSON line per example::

        {"epoch": 2, "index": 17, "split": "validation", "inputs": {...},
         "prediction": {...} | null, "expected": {...}, "reward": 1.0}

    ``index`` is the example's position in that split; ``prediction`` is ``null`` when the
    program failed (scored 0, as ``fit`` scores it). Each epoch's lines are written, flushed
    and fsynced together. The file is only ever appended to (delete it to start over); a torn
    last line left by a crash is dropped before writing.

    Logging costs ``num_samples`` program runs (and LM-judged rewards) per logged epoch; those
    calls are not in the epoch's ``logs`` (computed before callbacks run) but do count
    towards :class:`~promptfit.callbacks.BudgetStopping`.

    Resuming: :meth:`state_dict` records the epochs logged and the file's line count. When a
    backup is restored, lines the backup did not know about are removed -- except lines of
    epochs the restored run has already completed (written after the backup was taken, in
    the same epoch end), which stay valid -- so the resumed run neither loses nor duplicates
    epochs.

    Args:
        filepath: The JSONL file (parent directories are created).
        every_n_epochs: Log after epochs ``n - 1``, ``2n - 1``... (every epoch by default).
        num_samples: Examples logged per epoch (all of them if the split is smaller).
        seed: Seed of the example draw.

    Example:
        ```python
        import promptfit as pf

        logger = pf.callbacks.PredictionLogger("runs/predictions.jsonl", num_samples=3)
        # await program.fit(x, y, epochs=5, validation_split=0.2, callbacks=[logger])
        ```
    """

    def __init__(
        self,
        filepath: str | os.PathLike[str],
        every_n_epochs: int = 1,
        num_samples: int = 5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(filepath, str | os.PathLike) or not str(filepath):
            raise ConfigurationError(f"`filepath` must be a file path, got {filepath!r}.")
        self.filepath = Path(filepath)
        self.every_n_epochs = check_int(
            "PredictionLogger", "every_n_epochs", every_n_epochs, minimum=1
        )
        self.num_samples = check_int("PredictionLogger", "num_samples", num_samples, minimum=1)
        self.seed = check_int("PredictionLogger", "seed", seed)
        self.epochs_logged: list[int] = []
        self._lines: int | None = None  # complete lines in the file after our last write
        self._restored = False
        self._pending: list[dict[str, Any]] = []  # records not on disk yet (a write failed)
        self._dirty = False  # the last write failed: the file may end in a torn line
        self._guard = LogWriteGuard("PredictionLogger", self.filepath)

    def sample_indices(self, n: int) -> list[int]:
        """The indices logged from a split of ``n`` examples (fixed for a given seed)."""
        return sorted(random.Random(self.seed).sample(range(n), min(self.num_samples, n)))

    # -- file --------------------------------------------------------------------------------
    def _open_file(self) -> None:
        """Start a run: drop a torn last line and note where our records start."""
        lines = _complete_lines(self.filepath)
        _truncate(self.filepath, lines[-1][0] if lines else 0)
        self._lines = len(lines)

    def _write_pending(self) -> None:
        """Append the pending records, first cutting a torn line a failed write left."""
        if self._dirty:
            lines = _complete_lines(self.filepath)
            keep = len(lines) if self._lines is None else min(self._lines, len(lines))
            _truncate(self.filepath, lines[keep - 1][0] if keep else 0)
        self._dirty = True  # stays set if this write fails
        records = self._pending
        text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
        durable_append_text(self.filepath, text)
        self._lines = (self._lines or 0) + len(records)
        for epoch in dict.fromkeys(r["epoch"] for r in records):
            self.epochs_logged.append(epoch)
        self._pending = []
        self._dirty = False

    # -- hooks -------------------------------------------------------------------------------
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if not self._restored:
            self.epochs_logged = []
            self._pending = []
            if not self._guard.attempt(self._open_file):
                self._lines, self._dirty = None, True  # cut a torn line at the next write

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._restored = False
        if self._pending and not self._guard.attempt(self._write_pending):
            self._guard.report_lost(f"{len(self._pending)} record(s)")
        self._pending = []

    async def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        pending = {r["epoch"] for r in self._pending}
        if (epoch + 1) % self.every_n_epochs or epoch in self.epochs_logged or epoch in pending:
            return
        context = self.context
        if not isinstance(context, FitContext):
            return
        if context.val_xs:
            split, xs, ys = "validation", context.val_xs, context.val_ys
        else:
            split, xs, ys = "train", context.xs, context.ys
        indices = self.sample_indices(len(xs))
        if not indices:
            return
        outcome = await self.program.run_batch([xs[i] for i in indices], [ys[i] for i in indices])
        records = [
            {
                "epoch": epoch,
                "index": index,
                "split": split,
                "inputs": _jsonable(xs[index]),
                "prediction": None if prediction is None else _jsonable(prediction),
                "expected": _jsonable(ys[index]),
                "reward": reward,
            }
            for index, prediction, reward in zip(
                indices, outcome.predictions, outcome.rewards, strict=True
            )
        ]
        self._pending.extend(records)
        self._guard.attempt(self._write_pending)

    # -- state and config --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"epochs_logged": list(self.epochs_logged), "lines": self._lines}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Cut the file back to what the backup knew (see the class docstring)."""
        self.epochs_logged = [int(e) for e in state.get("epochs_logged", [])]
        self._restored = True
        known = state.get("lines")
        lines = _complete_lines(self.filepath)
        if known is None:  # the backup predates our first train begin: keep complete lines
            known = len(lines)
        keep = min(int(known), len(lines))
        context = self.context  # restored by the fit: its progress is the backup's
        done = context.progress.epoch if isinstance(context, FitContext) else None
        while done is not None and keep < len(lines):
            try:
                epoch = int(json.loads(lines[keep][1])["epoch"])
            except (ValueError, KeyError, TypeError):
                break
            if epoch >= done:
                break
            if epoch not in self.epochs_logged:
                self.epochs_logged.append(epoch)
            keep += 1
        _truncate(self.filepath, lines[keep - 1][0] if keep else 0)
        self._lines = keep

    def get_config(self) -> dict[str, Any]:
        return {
            "filepath": str(self.filepath),
            "every_n_epochs": self.every_n_epochs,
            "num_samples": self.num_samples,
            "seed": self.seed,
        }
