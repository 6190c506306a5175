"""``checkpoints.json``: the manifest of a checkpoint directory, and best/latest lookups.

Why a manifest: file names alone cannot tell which checkpoint is best (the monitored value may
not be in the name, and parsing names back is fragile) or which one is the latest (epoch
numbers restart when a run is resumed into the same directory). ``ProgramCheckpoint`` records
every file it writes, with the epoch, the monitored value and all logged metrics, so
:func:`best_checkpoint` and :func:`latest_checkpoint` answer from data instead of guesses.

The manifest is rewritten atomically after every change (never half-written), and entries
whose file has disappeared (deleted by hand, or by ``keep_top_k``) are ignored on read and
dropped the next time the manifest is written.

Layout::

    {
      "format": "promptfit.checkpoints",
      "version": 1,
      "checkpoints": [
        {"path": "ckpt-03.json", "epoch": 3, "batch": null, "monitor": "val_reward",
         "mode": "max", "value": 0.9, "metrics": {"reward": 0.8, "val_reward": 0.9, ...},
         "time": 1718000000.0, "kind": "program", "tags": ["best", "tolerance_2"]},
        ...
      ]
    }

``path`` is relative to the directory holding ``checkpoints.json``; ``epoch`` and ``batch``
are 1-based (the numbers ``{epoch}``/``{batch}`` give in file names; ``batch`` is ``null`` for
end-of-epoch saves); entries are in save order, so the last one is the latest.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from promptfit.checkpoints.retention import best_entry
from promptfit.errors import CheckpointError, ConfigurationError
from promptfit.metrics.direction import infer_mode
from promptfit.saving.atomic import atomic_write_json
from promptfit.saving.documents import DocumentError, parse_document, read_regular_file
from promptfit.saving.paths import PathEscapeError, contained_path
from promptfit.saving.secrets import scrub_credentials

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "CheckpointManifest",
    "best_checkpoint",
    "latest_checkpoint",
    "make_entry",
    "read_manifest",
]

MANIFEST_NAME = "checkpoints.json"
MANIFEST_FORMAT = "promptfit.checkpoints"
MANIFEST_VERSION = 1
KINDS = ("program", "variables")


def _json_number(value: Any) -> Any:
    """A log value as strict JSON: NaN and infinities become ``None``."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


def clean_metrics(logs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``logs`` made strict-JSON safe (NaN/inf → ``None``, unknown objects → ``str``)."""
    return {str(k): _json_number(v) for k, v in (logs or {}).items()}


def make_entry(
    path: str,
    *,
    epoch: int,
    batch: int | None,
    monitor: str,
    mode: str | None,
    value: float | None,
    metrics: Mapping[str, Any] | None,
    kind: str,
    tags: list[str] | None = None,
) -> dict[str, Any]:
    """One manifest record (``path`` relative to the manifest's directory, POSIX slashes)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return {
        "path": path,
        "epoch": epoch,
        "batch": batch,
        "monitor": monitor,
        "mode": mode,
        "value": _json_number(value),
        "metrics": clean_metrics(metrics),
        "time": time.time(),
        "kind": kind,
        "tags": list(tags or []),
    }


def _check_relative(manifest_path: Path, rel: Any) -> str:
    if not isinstance(rel, str) or not rel:
        raise CheckpointError(
            f"{manifest_path} is corrupt: an entry has path {rel!r}. Delete the file to start a "
            "fresh manifest."
        )
    try:
        # Real paths: a symlinked sub-directory must not lead a read or a delete elsewhere.
        contained_path(manifest_path.parent, rel)
    except PathEscapeError as error:
        raise CheckpointError(
            f"{manifest_path} is corrupt: entry path {error} (it points outside its "
            "directory). Delete the file to start a fresh manifest."
        ) from None
    return rel


def _check_fields(manifest_path: Path, entry: dict[str, Any]) -> None:
    """The fields ``ProgramCheckpoint`` and the lookups use must have their types, so a
    damaged manifest fails when it is read, not at an epoch end after paid LM calls."""
    tags, metrics = entry.get("tags"), entry.get("metrics")
    problem = None
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        problem = f"tags {tags!r:.60} are not a list of strings"
    elif not isinstance(metrics, dict):
        problem = f"metrics {metrics!r:.60} are not an object"
    elif not isinstance(entry.get("monitor", ""), str | None):
        problem = f"monitor {entry.get('monitor')!r:.60} is not a string"
    elif entry.get("mode") not in (None, "min", "max"):
        problem = f"mode {entry.get('mode')!r:.60} is not 'min' or 'max'"
    if problem:
        raise CheckpointError(
            f"{manifest_path} is corrupt: the entry {entry.get('path')!r} has {problem}. Delete "
            "the file to start a fresh manifest; the checkpoint files themselves are untouched."
        )


class CheckpointManifest:
    """The records of one checkpoint directory (``<directory>/checkpoints.json``).

    Args:
        directory: The checkpoint directory.
        entries: Records in save order (see the module docstring for their fields).

    Example:
        ```python
        import tempfile

        from promptfit.checkpoints import CheckpointManifest

        directory = tempfile.mkdtemp()
        manifest = CheckpointManifest(directory)
        assert manifest.latest() is None
        ```
    """

    def __init__(
        self, directory: str | os.PathLike[str], entries: list[dict[str, Any]] | None = None
    ) -> None:
        self.directory = Path(directory)
        self.entries: list[dict[str, Any]] = list(entries or [])

    @property
    def path(self) -> Path:
        """Where the manifest lives: ``<directory>/checkpoints.json``."""
        return self.directory / MANIFEST_NAME

    # -- reading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CheckpointManifest:
        """Read the manifest of ``directory`` (an empty one when there is none yet).

        Raises:
            CheckpointError: the file exists but is not a valid manifest (the message names it).
        """
        manifest = cls(directory)
        path = manifest.path
        try:
            text = read_regular_file(path)
        except FileNotFoundError:
            return manifest
        except OSError as exc:
            raise CheckpointError(f"Cannot read the checkpoint manifest {path}: {exc}.") from exc
        try:
            data = parse_document(text, MANIFEST_FORMAT, MANIFEST_VERSION)
        except DocumentError as error:
            raise CheckpointError(
                f"The checkpoint manifest {path} {error}. Delete or move it to start a fresh "
                "manifest; the checkpoint files themselves are untouched."
            ) from error
        entries = data.get("checkpoints")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise CheckpointError(
                f"The checkpoint manifest {path} is corrupt: 'checkpoints' must be a list of "
                "objects. Delete it to start a fresh manifest."
            )
        for entry in entries:
            _check_relative(path, entry.get("path"))
            entry.setdefault("tags", [])
            entry.setdefault("metrics", {})
            _check_fields(path, entry)
        manifest.entries = entries
        return manifest

    def file_of(self, entry: Mapping[str, Any]) -> Path:
        """The checkpoint file an entry describes (checked to lie inside the directory).

        Raises:
            CheckpointError: the entry's real path (symlinks resolved) is outside.
        """
        _check_relative(self.path, entry.get("path"))
        return self.directory / entry["path"]

    def unlink_entry_file(self, entry: Mapping[str, Any]) -> None:
        """Delete an entry's file, never anything outside the directory.

        The parent directories are resolved (a symlinked ``sub/`` cannot redirect the delete);
        a checkpoint that is itself a symlink loses the link, never its target.

        Raises:
            CheckpointError: the entry's parent directory is really outside the directory.
        """
        try:
            target = contained_path(self.directory, entry.get("path"), follow_last=False)
        except PathEscapeError as error:
            raise CheckpointError(
                f"{self.path}: refusing to delete {error}. Delete the manifest to start a "
                "fresh one."
            ) from None
        with contextlib.suppress(FileNotFoundError):
            target.unlink()

    def prune_missing(self) -> list[dict[str, Any]]:
        """Drop (and return) the entries whose checkpoint file no longer exists."""
        kept, dropped = [], []
        for entry in self.entries:
            (kept if self.file_of(entry).exists() else dropped).append(entry)
        self.entries = kept
        return dropped

    def get(self, rel_path: str) -> dict[str, Any] | None:
        """The entry recorded for ``rel_path``, if any."""
        for entry in self.entries:
            if entry["path"] == rel_path:
                return entry
        return None

    # -- writing -------------------------------------------------------------------------------
    def add(self, entry: dict[str, Any]) -> None:
        """Record a save; a file saved again replaces its old record and becomes the latest."""
        self.remove(entry["path"])
        self.entries.append(entry)

    def remove(self, rel_path: str) -> dict[str, Any] | None:
        """Forget the record of ``rel_path`` (the file is not touched)."""
        for index, entry in enumerate(self.entries):
            if entry["path"] == rel_path:
                return self.entries.pop(index)
        return None

    def save(self) -> Path:
        """Write the manifest atomically."""
        try:
            return atomic_write_json(
                self.path,
                {
                    "format": MANIFEST_FORMAT,
                    "version": MANIFEST_VERSION,
                    "checkpoints": scrub_credentials(self.entries),
                },
            )
        except OSError as exc:
            raise CheckpointError(
                f"Cannot write the checkpoint manifest {self.path}: {exc}."
            ) from exc

    # -- queries -------------------------------------------------------------------------------
    def latest(self) -> dict[str, Any] | None:
        """The most recently saved entry whose file exists."""
        for entry in reversed(self.entries):
            if self.file_of(entry).exists():
                return entry
        return None

    def best(self, monitor: str | None = None, mode: str | None = None) -> dict[str, Any] | None:
        """The entry with the best value of ``monitor`` (ties: the earlier stays best).

        Ranked by :func:`promptfit.checkpoints.retention.best_entry`, the rule
        ``ProgramCheckpoint`` uses for its ``best`` tag and ``keep_top_k``, so all three pick
        the same file.

        Args:
            monitor: Log key to rank by; defaults to the monitor of the latest entry. Entries
                saved while monitoring another key are ranked by their recorded ``metrics``.
            mode: ``"max"`` or ``"min"``; defaults to the mode recorded with the entries,
                else the one inferred from the key's name.

        Raises:
            ConfigurationError: ``mode`` is invalid or cannot be determined.
        """
        entries = [e for e in self.entries if self.file_of(e).exists()]
        if not entries:
            return None
        if monitor is None:
            monitor = entries[-1].get("monitor")
            if not monitor:
                return None
        if mode is None:
            mode = next(
                (
                    e.get("mode")
                    for e in reversed(entries)
                    if e.get("monitor") == monitor and e.get("mode") in ("min", "max")
                ),
                None,
            )
        if mode is None:
            mode = infer_mode(monitor)
            if mode is None:
                raise ConfigurationError(
                    f"Cannot tell whether {monitor!r} should be maximised or minimised; pass "
                    "mode='max' or mode='min'."
                )
        if mode not in ("min", "max"):
            raise ConfigurationError(f"`mode` must be 'min' or 'max', got {mode!r}.")
        best = best_entry(entries, mode, monitor)
        if best is None:
            warnings.warn(
                f"No checkpoint in {self.directory} recorded a value for {monitor!r}; cannot pick "
                "the best one.",
                UserWarning,
                stacklevel=2,
            )
        return best

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"CheckpointManifest({str(self.directory)!r}, {len(self.entries)} entries)"


def _manifest_directory(directory: str | os.PathLike[str]) -> Path:
    path = Path(directory)
    if path.name == MANIFEST_NAME and path.is_file():
        return path.parent
    return path


def read_manifest(directory: str | os.PathLike[str]) -> CheckpointManifest:
    """The manifest of ``directory`` (or of the ``checkpoints.json`` file given).

    Entries whose file was deleted are left out. Reading never writes: the file on disk is
    cleaned the next time a :class:`~promptfit.callbacks.ProgramCheckpoint` saves into it.

    Raises:
        CheckpointError: the manifest exists but is corrupt (the message names the file).

    Example:
        ```python
        import tempfile

        from promptfit.checkpoints import read_manifest

        assert len(read_manifest(tempfile.mkdtemp())) == 0
        ```
    """
    manifest = CheckpointManifest.load(_manifest_directory(directory))
    manifest.prune_missing()
    return manifest


def best_checkpoint(
    directory: str | os.PathLike[str], monitor: str | None = None, mode: str | None = None
) -> str | None:
    """Path of the best checkpoint in ``directory``, or ``None`` when there is none.

    Args:
        directory: A directory a :class:`~promptfit.callbacks.ProgramCheckpoint` wrote to.
        monitor: Log key to rank by (defaults to the key the checkpoints were saved under).
        mode: ``"max"``/``"min"`` (defaults to the recorded mode, else inferred from the key).

    Raises:
        CheckpointError: the manifest is corrupt.

    Example:
        ```python
        import tempfile

        from promptfit.checkpoints import best_checkpoint

        assert best_checkpoint(tempfile.mkdtemp()) is None
        ```
    """
    manifest = read_manifest(directory)
    entry = manifest.best(monitor, mode)
    return None if entry is None else str(manifest.file_of(entry))


def latest_checkpoint(directory: str | os.PathLike[str]) -> str | None:
    """Path of the most recently saved checkpoint in ``directory``, or ``None``.

    Raises:
        CheckpointError: the manifest is corrupt.

    Example:
        ```python
        import tempfile

        from promptfit.checkpoints import latest_checkpoint

        assert latest_checkpoint(tempfile.mkdtemp()) is None
        ```
    """
    manifest = read_manifest(directory)
    entry = manifest.latest()
    return None if entry is None else str(manifest.file_of(entry))
