"""``CSVLogger``: one CSV row of logs per epoch, crash-safe and resumable."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from promptfit.callbacks._log_files import LogWriteGuard
from promptfit.callbacks.callback import Callback
from promptfit.errors import ConfigurationError
from promptfit.saving.atomic import atomic_write_text, durable_append_text
from promptfit.saving.secrets import scrub_credentials, scrub_text

__all__ = ["CSVLogger"]

MISSING = "NA"


class CSVLogger(Callback):
    """Write every epoch's logs as one CSV row, for pandas, spreadsheets and plots.

    The first column is ``epoch`` (0-based, as in the logs), followed by the keys of the first
    epoch's logs in sorted order. The header is fixed by the first row so the file stays a
    plain table; if a later epoch logs a key the header lacks, the whole file is rewritten
    atomically with the new key appended to the header and ``NA`` in the earlier rows. A
    value missing from an epoch's logs (or ``None``) is written as ``NA``, which
    ``pandas.read_csv`` reads as NaN.

    Every row is flushed and fsynced as soon as it is written, so the file survives a crash
    up to the last finished epoch. Combined with
    :class:`~promptfit.callbacks.BackupAndRestore`, a resumed run first cuts the file back to
    the rows the backup knew about -- rows written by the crashed run after its last backup
    are dropped -- and then writes those epochs again, so no epoch appears twice.

    The file is prepared lazily, at the first epoch or batch of the fit rather than in
    ``on_train_begin``: a backup restored in ``on_train_begin`` must be known before the file is
    truncated.

    A file that cannot be written (full disk, permissions) never stops training: one warning
    is shown, the rows are kept in memory and the next epoch that can write rewrites the file
    atomically with them; rows still unwritten when the fit ends are reported as lost.

    Args:
        filepath: Path of the CSV file (parent directories are created).
        separator: The one-character field delimiter, e.g. ``";"`` or ``"\\t"``.
        append: ``False`` (default) starts a fresh file at each fit (unless resuming from a
            backup); ``True`` appends to an existing file, reusing its header, so several runs
            build one log.

    Raises:
        ConfigurationError: For an empty ``filepath`` or a ``separator`` that is not one
            character other than a quote or newline.

    Example:
        ```python
        import promptfit as pf

        log = pf.callbacks.CSVLogger("runs/exp1/log.csv")
        log.on_train_begin()
        log.on_epoch_end(0, {"reward": 0.5, "val_reward": 0.4})
        # runs/exp1/log.csv:
        # epoch,reward,val_reward
        # 0,0.5,0.4
        ```
    """

    def __init__(
        self, filepath: str | os.PathLike[str], separator: str = ",", append: bool = False
    ) -> None:
        super().__init__()
        if not isinstance(filepath, str | os.PathLike) or not os.fspath(filepath):
            raise ConfigurationError(f"`filepath` must be a non-empty path, got {filepath!r}.")
        if not isinstance(separator, str) or len(separator) != 1 or separator in '"\r\n':
            raise ConfigurationError(
                f"`separator` must be a single character such as ',' or ';' (not a quote or "
                f"newline), got {separator!r}."
            )
        self.filepath = Path(filepath)
        self.separator = separator
        self.append = bool(append)
        self.header: list[str] | None = None
        self.rows_written = 0
        self._prepared = False
        self._restored: dict[str, Any] | None = None
        self._pending: list[dict[str, Any]] = []  # rows not on disk yet (a write failed)
        self._dirty = False  # the last write failed: the file may end in a torn line
        self._guard = LogWriteGuard("CSVLogger", self.filepath)

    # -- hooks -------------------------------------------------------------------------------
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # Only mark the file as unprepared: a backup may still be restored by a callback that
        # runs after this one, and the file must not be truncated before that is known.
        self._prepared = False

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._guard.attempt(self._prepare)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if not self._prepared:
            self._guard.attempt(self._prepare)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._pending.append({**(logs or {}), "epoch": epoch})
        self._guard.attempt(self._write_pending)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        # No _prepare() here: a fit that failed before its first epoch (a refused backup, say)
        # must leave the previous log untouched.
        if self._pending and not self._guard.attempt(self._write_pending):
            epochs = [row["epoch"] for row in self._pending]
            self._guard.report_lost(f"{len(epochs)} row(s) (epochs {epochs}, still in History)")
        self._pending.clear()
        self._prepared = False
        self._restored = None

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"rows_written": self.rows_written, "header": self.header}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        header = state["header"]
        if header is not None:
            # The backup's header is the file's at backup time: the file's header can only have
            # grown since (new keys are appended). Anything else would rewrite the log with
            # columns that never were.
            current, _rows = self._read_file()
            if header[:1] != ["epoch"] or (
                current is not None and current[: len(header)] != list(header)
            ):
                raise ValueError(
                    f"CSVLogger: the backed-up header {header!r:.100} does not match "
                    f"{self.filepath} (header {current!r:.100})"
                )
        # Applied to the file at the next hook (see _prepare), whichever order the hooks ran in.
        self._restored = {"rows_written": int(state["rows_written"]), "header": header}
        self._prepared = False

    # -- file handling -----------------------------------------------------------------------
    def _prepare(self) -> None:
        """Bring the file in line with this fit: fresh, appended to, or cut back to a backup."""
        if self._prepared:
            return
        restored = self._restored
        if restored is not None:
            self._truncate_to(restored["rows_written"], restored["header"])
        elif self.append and self.filepath.exists():
            header, rows = self._read_file()
            self.header = header
            self.rows_written = len(rows)
            if header is not None and not self._ends_with_newline():
                # A torn last line (a crash mid-write): rewrite the complete rows only.
                self._rewrite(rows)
        else:
            self.header = None
            self.rows_written = 0
            atomic_write_text(self.filepath, "")
        self._restored = None  # only now: a failed attempt is repeated at the next hook
        self._dirty = False
        self._prepared = True

    def _write_pending(self) -> None:
        """Write the pending rows: appended normally; the whole file rewritten atomically when
        the header grows or the previous write failed."""
        self._prepare()
        if not self._pending:
            return
        rewrite = self._dirty
        if self.header is None:
            self.header = ["epoch", *sorted(k for k in self._pending[0] if k != "epoch")]
            rewrite = True
        known = set(self.header)
        new_keys = sorted({k for row in self._pending for k in row} - known - {"epoch"})
        self._dirty = True  # stays set if this write fails
        if new_keys or rewrite:
            rows = self._read_rows() if self.rows_written else []
            self.header = [*self.header, *new_keys]
            rows += [{k: _cell(row.get(k)) for k in self.header} for row in self._pending]
            self._rewrite(rows)
        else:
            lines = [self._format([row.get(k) for k in self.header]) for row in self._pending]
            durable_append_text(self.filepath, "".join(lines))
        self.rows_written += len(self._pending)
        self._pending.clear()
        self._dirty = False

    def _truncate_to(self, rows_written: int, header: list[str] | None) -> None:
        """Keep the header and first ``rows_written`` rows the backup knew about."""
        _, rows = self._read_file()
        if len(rows) < rows_written:
            warnings.warn(
                f"CSVLogger: {self.filepath} has {len(rows)} rows but the backup recorded "
                f"{rows_written}; the missing rows cannot be recovered.",
                RuntimeWarning,
                stacklevel=2,
            )
        self.header = list(header) if header is not None else None
        kept = rows[:rows_written]
        self.rows_written = len(kept)
        if self.header is None:
            atomic_write_text(self.filepath, "")
        else:
            self._rewrite(kept)

    def _read_file(self) -> tuple[list[str] | None, list[dict[str, str]]]:
        """Header and complete rows of the file (a torn last line is left out)."""
        try:
            text = self.filepath.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None, []
        if not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=self.separator)
        lines = list(reader)
        if not lines:
            return None, []
        header = lines[0]
        rows = [dict(zip(header, line, strict=False)) for line in lines[1:] if line]
        return header, rows

    def _read_rows(self) -> list[dict[str, str]]:
        return self._read_file()[1][: self.rows_written]

    def _ends_with_newline(self) -> bool:
        with self.filepath.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return True
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        """Atomically replace the file with the header and ``rows`` (already-formatted text)."""
        assert self.header is not None
        lines = [self._format(self.header, raw=True)]
        for row in rows:
            lines.append(self._format([row.get(k, MISSING) for k in self.header], raw=True))
        atomic_write_text(self.filepath, "".join(lines))

    def _format(self, values: list[Any], raw: bool = False) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=self.separator, lineterminator="\n")
        writer.writerow(values if raw else [_cell(v) for v in values])
        return buffer.getvalue()

    # -- config ------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {
            "filepath": os.fspath(self.filepath),
            "separator": self.separator,
            "append": self.append,
        }


def _cell(value: Any) -> str:
    """One CSV cell: ``NA`` for missing values, JSON for lists and dicts."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return scrub_text(value)  # a log value quoting a header or URL must not leak a key
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if hasattr(value, "item"):  # numpy scalars
        return _cell(value.item())
    return json.dumps(scrub_credentials(value), ensure_ascii=False, default=str)
