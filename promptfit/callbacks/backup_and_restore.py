"""``BackupAndRestore``: survive crashes by backing up the whole run and resuming from it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from promptfit.callbacks._checks import check_save_freq
from promptfit.callbacks._dir_lock import LOCK_NAME, DirectoryLock
from promptfit.callbacks._restore_schema import validate_backup
from promptfit.callbacks._run_fingerprint import run_fingerprint
from promptfit.callbacks.callback import Callback
from promptfit.errors import BackupMismatchError, CheckpointError, ConfigurationError
from promptfit.saving.atomic import atomic_write_bytes, fsync_dir
from promptfit.saving.documents import DocumentError, parse_document, read_regular_file
from promptfit.saving.secrets import register_language_models, scrub_credentials
from promptfit.training.context import FitContext

__all__ = ["BackupAndRestore"]

logger = logging.getLogger("promptfit")

BACKUP_FORMAT = "promptfit.backup"
BACKUP_VERSION = 1
LATEST_NAME = "backup.json"
PREVIOUS_NAME = "backup.prev.json"

# Parts of ``fit_state`` that are training data (copied as they are), not configuration.
_UNSCRUBBED = ("variables", "optimizer", "fingerprint", "seed")

# What a backup's ``fit_state`` must hold for FitContext.load_state_dict to apply it; a file
# without them is treated as corrupt instead of half-restoring the program.
_REQUIRED_KEYS = (
    "seed",
    "epoch",
    "step",
    "fingerprint",
    "reward_total",
    "reward_count",
    "epoch_usage_start",
    "variables",
)


class BackupAndRestore(Callback):
    """Back up the whole training run so a crashed ``fit`` resumes where it stopped.

    LM calls cost money and time, so losing hours of training to an out-of-memory kill, a
    network outage or a pre-empted machine is expensive. This callback writes a *backup* of
    everything ``fit`` needs to continue (once as the fit starts, before any LM call, then at
    every ``save_freq``) -- variables, optimizer state (its RNG included),
    epoch and batch position, the running epoch accumulators and metric states, LM usage
    counters, and the ``state_dict()`` of every other callback (so :class:`History` keeps
    all epochs, early stopping keeps its patience counter, a CSV log gets no duplicate rows,
    a monitor keeps its run id). When ``fit`` is started again with the same program, data,
    ``epochs`` and ``batch_size`` and a ``BackupAndRestore`` on the same ``backup_dir``, it
    restores the backup in ``on_train_begin`` and training continues at the saved epoch and
    batch; with a deterministic LM the result equals an uninterrupted run.

    Backups are written atomically (temporary file, fsync, rename), so a crash or SIGKILL at
    any moment leaves the previous complete backup on disk, never a torn one. When training
    ends normally the backup is deleted (``delete_checkpoint=True``); when it ends with an
    error or an interrupt it is kept for the next attempt.

    ``fit`` runs this callback after all the others in every hook, so a backup includes what
    the other callbacks did at that epoch or batch end, and the restore in ``on_train_begin``
    comes after the other callbacks' own ``on_train_begin`` (a reset there is overridden by
    the restored state). Callbacks whose ``on_train_begin`` has side effects that depend on
    resuming (truncating a file, opening a tracking run) should defer them to their first
    epoch or batch hook, or reconcile them in ``load_state_dict``, as
    :class:`~promptfit.callbacks.CSVLogger` does.

    The backup is refused with :class:`~promptfit.errors.BackupMismatchError` when it was made
    by a different run: another program structure, ``epochs``, ``batch_size``, training or
    validation data. Use one ``backup_dir`` per experiment.

    Args:
        backup_dir: Directory of the backup files (created when needed). Use one directory per
            training run; do not share it with other callbacks.
        save_freq: ``"epoch"`` to back up at the end of every epoch, or an integer N to back
            up after every N training batches (counted from the first batch of the fit, so a
            resumed run saves at the same points). Batch backups let a crash lose at most N
            batches of LM calls instead of an epoch.
        double_checkpoint: Also keep the previous backup (``backup.prev.json``). If the
            latest backup cannot be read, the run resumes from the previous one with a
            warning instead of failing.
        delete_checkpoint: Delete the backup when training completes without error. With
            ``False`` the final backup stays, and running the same ``fit`` again restores the
            finished state and trains nothing.

    Only one fit at a time may use a ``backup_dir``: the callback holds an OS lock
    (``fcntl.flock``) on it from ``on_train_begin`` to ``on_train_end``, released by the kernel
    if the process dies. Every value of a backup is validated (see
    ``promptfit/callbacks/_restore_schema.py``) before anything is restored or any LM call.

    Raises:
        ConfigurationError: For an empty ``backup_dir`` or an invalid ``save_freq``.
        BackupLockedError: (in ``fit``) another fit holds the directory; names its pid/host.
        CheckpointError: (in ``fit``) the backup is corrupt or invalid; names the file to delete.

    Example:
        ```python
        import promptfit as pf

        backup = pf.callbacks.BackupAndRestore(backup_dir="runs/exp1/backup", save_freq=10)
        # history = await program.fit(x, y, epochs=20, seed=0, callbacks=[backup])
        ```
    """

    #: Tells ``fit`` to run this callback after every other one (see the class docstring).
    snapshots_fit_state = True

    def __init__(
        self,
        backup_dir: str | os.PathLike[str],
        save_freq: str | int = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(backup_dir, str | os.PathLike) or not os.fspath(backup_dir):
            raise ConfigurationError(
                f"`backup_dir` must be a non-empty directory path, got {backup_dir!r}."
            )
        self.backup_dir = Path(backup_dir)
        self.save_freq = check_save_freq("BackupAndRestore", save_freq)
        self.double_checkpoint = bool(double_checkpoint)
        self.delete_checkpoint = bool(delete_checkpoint)
        self._failed = False
        # The bytes of the newest backup known to be good (written or restored by this
        # instance): what ``backup.prev.json`` becomes on the next save. Keeping them avoids
        # rotating a corrupt file over the good previous one.
        self._last_good: bytes | None = None
        # The training setup (optimizer, its settings, language models) this fit's backups
        # record beside FitProgress's fingerprint; see ``_run_fingerprint``.
        self._setup: dict[str, Any] = {}
        # Held from on_train_begin to on_train_end: one fit per backup directory at a time.
        self._lock = DirectoryLock(self.backup_dir, "BackupAndRestore")

    # -- paths -------------------------------------------------------------------------------
    @property
    def latest_path(self) -> Path:
        """The newest backup file."""
        return self.backup_dir / LATEST_NAME

    @property
    def previous_path(self) -> Path:
        """The previous backup, kept when ``double_checkpoint=True``."""
        return self.backup_dir / PREVIOUS_NAME

    # -- hooks -------------------------------------------------------------------------------
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._failed = False
        self._last_good = None
        program = self.program
        state = self.context
        if not isinstance(state, FitContext):
            raise CheckpointError(
                "BackupAndRestore only works inside program.fit(); pass it in `callbacks=`."
            )
        self._setup = run_fingerprint(program, state.optimizer)
        # Before reading anything: a second run on this directory fails here, at once.
        self._lock.acquire()
        found = self._read_backup()
        if found is None:
            # A backup of the starting point, before any LM call: it records the fit's run id,
            # under which the response cache files every reply this fit pays for. Without it, a
            # crash before the first epoch (or batch) backup resumed under a new run id, and the
            # replies paid before the crash counted as cache hits instead of the calls they were.
            self._save()
            return
        path, raw, payload = found
        saved = payload["fit_state"]
        # Every value is checked before anything is applied (and before any LM call).
        validate_backup(path, saved, state, program)
        before = _Snapshot(program)
        try:
            state.load_state_dict(saved, exclude=self)
        except BackupMismatchError as error:
            before.restore()
            # Same error, with the file named: the fix ("delete the old backup") needs it.
            raise BackupMismatchError(f"Cannot resume from the backup {path}: {error}") from None
        except CheckpointError:
            before.restore()
            raise
        except Exception as error:  # a state a callback or the optimizer cannot take
            before.restore()
            raise CheckpointError(
                f"The backup {path} is invalid ({type(error).__name__}: {str(error)[:200]}), "
                f"so training cannot resume from it. Delete {path} to start training from "
                "scratch."
            ) from error
        self._last_good = raw
        self._warn_unmatched_callbacks(saved.get("callbacks", {}), state)
        self._report_resume(path, state)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.save_freq == "epoch":
            return
        state = self.context
        if not isinstance(state, FitContext) or state.global_step % int(self.save_freq) != 0:
            return
        # When a callback asked to stop at this batch, fit goes straight to the epoch end, which
        # must run again on resume; the previous backup leads back here deterministically.
        if self.program.stop_training:
            return
        self._save()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.save_freq == "epoch":
            self._save()

    def on_train_error(self, error: BaseException) -> None:
        self._failed = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        try:
            if not self._failed and self.delete_checkpoint:
                self.delete_backup()
        finally:
            self._lock.release()

    # -- files -------------------------------------------------------------------------------
    def delete_backup(self) -> None:
        """Remove the backup files (and the directory if nothing else is in it)."""
        names = {LATEST_NAME, PREVIOUS_NAME}
        if not self.backup_dir.is_dir():
            return
        for entry in self.backup_dir.iterdir():
            # Temporary files left by a write that was killed half-way are removed too.
            stale_tmp = entry.name.startswith(
                (f".{LATEST_NAME}.", f".{PREVIOUS_NAME}.")
            ) and entry.name.endswith(".tmp")
            if entry.name in names or stale_tmp or (entry.name == LOCK_NAME and self._lock.held):
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
        fsync_dir(self.backup_dir)
        with contextlib.suppress(OSError):
            self.backup_dir.rmdir()  # only succeeds when empty: never deletes user files
        self._last_good = None

    def _save(self) -> None:
        program = self.program
        state = self.context
        if not isinstance(state, FitContext):
            return
        register_language_models(program.all_language_models())
        snapshot = state.state_dict(exclude=self)
        snapshot["fingerprint"] = {**snapshot["fingerprint"], **self._setup}
        payload = {
            "format": BACKUP_FORMAT,
            "version": BACKUP_VERSION,
            # Callback states and logs may quote configurations: no credential is written.
            # Variables and optimizer state are training data and must round-trip exactly.
            "fit_state": scrub_credentials(snapshot, keep=_UNSCRUBBED),
        }
        try:
            # NaN is allowed (Python reads it back): a NaN metric must not kill the run.
            raw = (json.dumps(payload, ensure_ascii=False, allow_nan=True) + "\n").encode()
        except (TypeError, ValueError) as error:
            raise CheckpointError(
                f"Cannot back up the run to {self.latest_path}: its state is not JSON "
                f"serialisable ({error}). A callback's state_dict() must return plain JSON."
            ) from error
        try:
            if self.double_checkpoint and self._last_good is not None:
                # Each step is an atomic replace, so a kill between the two leaves two copies
                # of the previous backup, never a missing or torn one.
                atomic_write_bytes(self.previous_path, self._last_good)
            atomic_write_bytes(self.latest_path, raw)
        except OSError as error:
            raise CheckpointError(
                f"Cannot write the backup {self.latest_path}: {error}. Check that "
                f"{self.backup_dir} is writable and the disk is not full."
            ) from error
        self._last_good = raw

    def _read_backup(self) -> tuple[Path, bytes, dict[str, Any]] | None:
        """The newest readable backup as ``(path, raw bytes, payload)``, or ``None``."""
        candidates = [self.latest_path]
        if self.double_checkpoint:
            candidates.append(self.previous_path)
        problems: list[tuple[Path, str]] = []
        for path in candidates:
            try:
                raw = read_regular_file(path)  # a FIFO named backup.json must not block
            except FileNotFoundError:
                continue
            except OSError as error:
                problems.append((path, f"cannot be read: {error}"))
                continue
            problem, payload = _parse(raw)
            if problem is not None or payload is None:
                problems.append((path, problem or "unreadable"))
                continue
            if problems:
                bad = "; ".join(f"{p} {why}" for p, why in problems)
                warnings.warn(
                    f"BackupAndRestore: {bad}. Resuming from the previous backup {path} "
                    "instead (some recent work will be redone).",
                    RuntimeWarning,
                    stacklevel=2,
                )
            elif path != self.latest_path:
                warnings.warn(
                    f"BackupAndRestore: {self.latest_path} is missing; resuming from the "
                    f"previous backup {path}.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return path, raw, payload
        if not problems:
            return None
        if len(problems) == 1:
            path, why = problems[0]
            raise CheckpointError(
                f"The backup {path} is corrupt ({why}), so training cannot resume from it. "
                f"Delete {path} to start training from scratch"
                + ("" if self.double_checkpoint else " (double_checkpoint=True keeps a spare)")
                + "."
            )
        details = "; ".join(f"{p} {why}" for p, why in problems)
        raise CheckpointError(
            f"Every backup in {self.backup_dir} is corrupt: {details}. Delete them to start "
            "training from scratch."
        )

    # -- reporting ---------------------------------------------------------------------------
    def _warn_unmatched_callbacks(self, saved: dict[str, Any], state: FitContext) -> None:
        """Warn when the callback list changed: unmatched callbacks restart from scratch."""
        current = {
            state.callback_key(i, cb)
            for i, cb in enumerate(state.callbacks)
            if cb is not self and cb.state_dict()
        }
        missing = sorted(set(saved) - current)
        new = sorted(k for k in current - set(saved))
        if missing or new:
            warnings.warn(
                "BackupAndRestore: the callbacks differ from the backed-up run "
                f"(in the backup only: {missing or 'none'}; new: {new or 'none'}); their "
                "state was not restored. Pass the same callbacks in the same order to resume "
                "them exactly.",
                RuntimeWarning,
                stacklevel=3,
            )

    def _report_resume(self, path: Path, state: FitContext) -> None:
        epochs = self.params.get("epochs", state.epochs)
        steps = self.params.get("steps", state.steps_per_epoch)
        progress = state.progress
        if self.program.stop_training or progress.epoch >= epochs:
            where = "the backed-up run had already finished; nothing left to train"
        else:
            where = f"continuing at epoch {progress.epoch + 1}/{epochs}"
            if progress.step:
                where += f", batch {progress.step + 1}/{steps}"
        message = f"BackupAndRestore: resumed from {path}: {where}."
        logger.info(message)
        if self.params.get("verbose", 1) not in (0, "0"):
            print(message, flush=True)

    # -- config ------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {
            "backup_dir": os.fspath(self.backup_dir),
            "save_freq": self.save_freq,
            "double_checkpoint": self.double_checkpoint,
            "delete_checkpoint": self.delete_checkpoint,
        }


class _Snapshot:
    """What a failed restore must put back: the program's variables, usage and stop flag."""

    def __init__(self, program: Any) -> None:
        self.program = program
        self.variables = program.get_variables()
        self.lms = list(program.all_language_models())
        self.usage = [lm.usage.state_dict() for lm in self.lms]
        self.stop_training = program.stop_training

    def restore(self) -> None:
        with contextlib.suppress(Exception):
            self.program.set_variables(self.variables)
        for lm, usage in zip(self.lms, self.usage, strict=True):
            lm.usage.load_state_dict(usage)
        self.program.stop_training = self.stop_training


def _parse(raw: bytes) -> tuple[str | None, dict[str, Any] | None]:
    """``(problem, payload)``: exactly one is ``None``."""
    try:
        payload = parse_document(raw, BACKUP_FORMAT, BACKUP_VERSION)
    except DocumentError as error:
        return str(error), None
    fit_state = payload.get("fit_state")
    if not isinstance(fit_state, dict):
        return "has no fit state", None
    missing = [key for key in _REQUIRED_KEYS if key not in fit_state]
    if missing:
        return f"lacks {', '.join(missing)}", None
    return None, payload
