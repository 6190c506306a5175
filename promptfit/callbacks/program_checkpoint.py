"""``ProgramCheckpoint``: save the program (or its variables) during ``fit``.

The callback decides *when* to save and does the file work; the rules live beside the manifest
in :mod:`promptfit.checkpoints`: the template rules in ``checkpoints/filepath.py``, ranking, tags,
tolerances and which files ``keep_top_k`` deletes as pure functions in
``checkpoints/retention.py``. Argument checks are in ``callbacks/_checkpoint_checks.py``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from promptfit.callbacks._checkpoint_checks import (
    check_distinct_names,
    check_module_names,
    check_on_best,
    check_tolerances,
)
from promptfit.callbacks._checks import check_optional_int, check_save_freq, json_float
from promptfit.callbacks._monitoring import MetricWatcher
from promptfit.callbacks.callback import Callback
from promptfit.callbacks.callback_list import CallbackList
from promptfit.checkpoints import retention
from promptfit.checkpoints.filepath import (
    checked_template,
    fill_template,
    relative_to,
    template_directory,
    template_fields,
)
from promptfit.checkpoints.manifest import CheckpointManifest, make_entry
from promptfit.checkpoints.retention import Marks, Tolerance
from promptfit.errors import CheckpointError, ConfigurationError
from promptfit.saving.paths import PathEscapeError, contained_path

if TYPE_CHECKING:
    from promptfit.programs.program import Program

__all__ = ["ProgramCheckpoint"]


class ProgramCheckpoint(Callback):
    """Save the program, or only its variables, during training.

    Prompt training is paid for per LM call, and the last epoch is often not the best one:
    checkpoints keep the good programs on disk so they survive the end of the run, a crash,
    or a regression in later epochs. Every save is recorded in ``checkpoints.json`` (see
    :mod:`promptfit.checkpoints`) so :func:`~promptfit.checkpoints.best_checkpoint` and
    :func:`~promptfit.checkpoints.latest_checkpoint` can find them again.

    **File names.** ``filepath`` is a format string filled from the logs, as in Keras:
    ``{epoch}`` is the 1-based epoch, ``{batch}`` the 1-based batch (only with an integer
    ``save_freq``) and any other field a log key with its format spec, e.g.
    ``"ckpts/prog-{epoch:02d}-{val_reward:.3f}.json"``. Only plain names are allowed (checked at
    construction). The manifest is written in the deepest directory of ``filepath`` that does
    not contain a field (``"ckpts"`` above).

    **What is saved.** ``program.save(path)`` (structure and variables), or
    ``program.save_variables(path)`` with ``save_variables_only=True`` or ``module_names``
    (only those modules' variables, e.g. to checkpoint the one generator being tuned).
    Files are written atomically: a crash never leaves a half-written checkpoint.

    **When.** At every epoch end (``save_freq="epoch"``) or every ``save_freq`` training
    batches; with an integer ``save_freq`` also once more when training ends normally, if
    batches ran since the last save (a *final* save, so the last steps are never lost; it is
    named after the last batch that ran, and gets the last epoch's logs). With
    ``save_best_only``, only when ``monitor`` improves strictly on the best value so far (which
    starts at ``initial_value_threshold`` when given), as Keras does.

    **Retention.** ``keep_top_k=k`` keeps the ``k`` checkpoints with the best monitored values
    and deletes the files of the others, except that the newest checkpoint and the tagged ones
    below are never deleted. **Ties: the earlier checkpoint stays best**, for the ``best`` tag,
    the ranking and :func:`~promptfit.checkpoints.best_checkpoint` alike, so exactly ``k``
    files are kept by rank (see :mod:`promptfit.checkpoints.retention`).

    **A disk that refuses a write** (full, read-only, a path that is not a directory) does not
    end the run: the checkpoint is skipped with a ``RuntimeWarning`` naming the path, and
    training goes on. A template that formats to a path outside its directory is refused with
    :class:`~promptfit.errors.CheckpointError` (with ``..`` in the template itself, already at
    construction with :class:`~promptfit.errors.ConfigurationError`).

    **Tolerances** (``tolerances=[2, 5]``): as if several early-stopping runs with patience 2
    and 5 had been made from one run, the checkpoint each of them would have ended with is
    kept. For each tolerance ``t`` the best checkpoint is tagged ``tolerance_t`` until the
    monitor goes ``t`` consecutive checks (epochs, or save points with an integer
    ``save_freq``) without improving; from then on that tolerance is *exhausted* and its
    checkpoint is frozen, even if the run later finds a better one. The overall best is always
    tagged ``best``. Tagged files are never deleted by ``keep_top_k``. Because every
    checkpoint must stay a separate file, ``keep_top_k`` and ``tolerances`` require
    ``{epoch}`` (and ``{batch}`` with an integer ``save_freq``) in ``filepath``.

    **Callbacks on a new best.** Each callback of ``on_best`` gets ``on_epoch_end(epoch,
    logs')`` whenever a new best checkpoint is saved, with ``logs'`` =
    ``{f"best={monitor}/{key}": value}`` so its logged keys do not collide with the live
    ones (e.g. a CSV logger of the best-so-far metrics). They also receive ``set_program``,
    ``set_params``, ``on_train_begin`` and ``on_train_end``.

    After every save, the other callbacks of the run get ``on_checkpoint_saved(path, logs)``.

    **State.** As with Keras' ``ModelCheckpoint``, the best value is kept across ``fit``
    calls on the same instance. :meth:`state_dict` holds the best value, the per-tolerance
    counters, the batch counter and the files this instance wrote, so
    :class:`~promptfit.callbacks.BackupAndRestore` resumes retention and tags exactly.
    ``keep_top_k`` and the tags only touch files this instance wrote: checkpoints of other
    runs sharing the directory stay on disk and in the manifest.

    Args:
        filepath: Format string of the checkpoint paths (see above).
        monitor: Log key used for ``save_best_only``, ranking and tags.
        verbose: 1 prints a line per save decision.
        save_best_only: Save only when ``monitor`` improves.
        save_variables_only: Write variables files instead of whole programs.
        mode: ``"auto"``, ``"min"`` or ``"max"`` (see :class:`EarlyStopping`).
        save_freq: ``"epoch"`` or a positive number of training batches.
        initial_value_threshold: Value a checkpoint must beat to count as best.
        keep_top_k: Number of best checkpoints to keep (``None``: keep all).
        module_names: Save only these modules' variables (implies a variables file).
        tolerances: Patience values whose best checkpoint is kept (see above).
        on_best: Callbacks run whenever a new best checkpoint is saved.
        strict: Raise :class:`~promptfit.errors.MonitorKeyError` when ``monitor`` is missing
            from the logs instead of warning once.

    Example:
        ```python
        import tempfile

        import promptfit as pf

        checkpoint = pf.callbacks.ProgramCheckpoint(
            filepath=tempfile.mkdtemp() + "/prog-{epoch:02d}-{val_reward:.2f}.json",
            monitor="val_reward",
            save_best_only=True,
            keep_top_k=3,
            tolerances=[2],
        )
        # await program.fit(x, y, validation_split=0.2, epochs=10, callbacks=[checkpoint])
        # promptfit.checkpoints.best_checkpoint(directory) -> path of the best program
        ```
    """

    def __init__(
        self,
        filepath: str | os.PathLike[str],
        monitor: str = "val_reward",
        verbose: int = 0,
        save_best_only: bool = False,
        save_variables_only: bool = False,
        mode: str = "auto",
        save_freq: str | int = "epoch",
        initial_value_threshold: float | None = None,
        keep_top_k: int | None = None,
        module_names: Sequence[str] | None = None,
        tolerances: Sequence[int] | None = None,
        on_best: Sequence[Callback] | None = None,
        strict: bool = False,
    ) -> None:
        super().__init__()
        self.filepath = checked_template(filepath)
        self._fields = template_fields(self.filepath)
        self._monitor = MetricWatcher(monitor, mode, 0.0, strict, owner="ProgramCheckpoint")
        self.monitor = monitor
        self.mode = mode
        self.strict = bool(strict)
        if isinstance(verbose, bool) or not isinstance(verbose, int) or verbose < 0:
            raise ConfigurationError(
                f"ProgramCheckpoint: `verbose` must be 0 or 1, got {verbose!r}."
            )
        self.verbose = verbose
        self.save_best_only = bool(save_best_only)
        self.save_variables_only = bool(save_variables_only)
        self.save_freq = check_save_freq("ProgramCheckpoint", save_freq)
        if initial_value_threshold is not None and (
            isinstance(initial_value_threshold, bool)
            or not isinstance(initial_value_threshold, int | float)
            or math.isnan(initial_value_threshold)
        ):
            raise ConfigurationError(
                "ProgramCheckpoint: `initial_value_threshold` must be a number or None, got "
                f"{initial_value_threshold!r}."
            )
        self.initial_value_threshold = (
            None if initial_value_threshold is None else float(initial_value_threshold)
        )
        self.keep_top_k = check_optional_int(
            "ProgramCheckpoint", "keep_top_k", keep_top_k, minimum=1
        )
        self.module_names: list[str] | None = check_module_names(module_names)
        self.tolerances: list[int] | None = check_tolerances(tolerances)
        check_distinct_names(
            self.filepath,
            self._fields,
            self.save_freq,
            keeps_several=self.keep_top_k is not None or bool(self.tolerances),
        )
        self.on_best = check_on_best(on_best)
        self._children = CallbackList(self.on_best)

        self.directory = template_directory(self.filepath)
        self._marks = retention.initial_marks(self.initial_value_threshold, self.tolerances or [])
        self._batches_seen = 0
        self._last_batch: int | None = None
        self._current_epoch = 0
        self._saved: list[str] = []
        self._failed = False

    @property
    def kind(self) -> str:
        """``"variables"`` or ``"program"``: what each checkpoint file holds."""
        return "variables" if self.save_variables_only or self.module_names else "program"

    @property
    def best(self) -> float | None:
        """The best monitored value so far (``initial_value_threshold`` before any)."""
        return self._marks.best

    @property
    def best_path(self) -> str | None:
        """The best checkpoint's path, relative to :attr:`directory` (``None`` before one)."""
        return self._marks.best_path

    # -- wiring --------------------------------------------------------------------------------
    def set_program(self, program: Program) -> None:
        super().set_program(program)
        self._children.set_program(program)

    def set_params(self, params: dict[str, Any]) -> None:
        super().set_params(params)
        self._children.set_params(params)

    # -- hooks ---------------------------------------------------------------------------------
    async def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # These checks run before any LM call; so does reading the manifest, which a resumed
        # run will update (a corrupt one fails now, not after a paid epoch).
        self._failed = False
        self._monitor.resolve()
        CheckpointManifest.load(self.directory)
        if self.module_names:
            known = sorted(m.name for m in self.program.modules)
            unknown = [n for n in self.module_names if n not in known]
            if unknown:
                raise ConfigurationError(
                    f"ProgramCheckpoint: module_names {unknown} are not modules of "
                    f"{self.program.name!r}; it has {known}."
                )
        await self._children.on_train_begin(logs)

    async def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._current_epoch = epoch

    async def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.save_freq == "epoch":
            return
        self._batches_seen += 1
        self._last_batch = batch
        if self._batches_seen >= int(self.save_freq):
            self._batches_seen = 0
            await self._save(self._current_epoch, batch, logs)

    async def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._current_epoch = epoch
        if self.save_freq == "epoch":
            await self._save(epoch, None, logs)

    def on_train_error(self, error: BaseException) -> None:
        self._failed = True

    async def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        try:
            # The final save of batch-wise checkpointing: the batches after the last save
            # would otherwise be lost when the run ends between two save points. A failed run
            # is left to BackupAndRestore (its program may be mid-update).
            if self.save_freq != "epoch" and self._batches_seen and not self._failed:
                self._batches_seen = 0
                batch = self._last_batch if self._last_batch is not None else 0
                await self._save(self._current_epoch, batch, logs, final=True)
        finally:
            await self._children.on_train_end(logs)

    # -- saving --------------------------------------------------------------------------------
    def _format_best(self) -> str:
        value = self.best if self.best is not None else self._monitor.initial_best()
        return f"{value:.5f}"

    def _say(self, message: str) -> None:
        if self.verbose > 0:
            print(message, flush=True)

    def _write(self, path: str) -> bool:
        """Write one checkpoint; ``False`` (with a warning) when the disk refuses it: a lost
        copy of the program must not end a paid-for fit (BackupAndRestore keeps the run)."""
        try:
            if self.kind == "variables":
                self.program.save_variables(path, module_names=self.module_names)
            else:
                self.program.save(path)
        except OSError as exc:
            warnings.warn(
                f"ProgramCheckpoint could not write {path} ({exc}); training goes on without "
                "this checkpoint. Check that the directory is writable and the disk is not full.",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
        return True

    def _update_manifest(
        self,
        rel: str,
        epoch: int,
        batch: int | None,
        current: float | None,
        is_best: bool,
        logs: dict[str, Any],
    ) -> bool:
        """Record the save and apply retention; ``False`` (with a warning) if the manifest
        cannot be written: then marks and owned paths stay as they were."""
        manifest = CheckpointManifest.load(self.directory)
        manifest.prune_missing()
        entry = make_entry(
            rel,
            epoch=epoch + 1,
            batch=None if batch is None else batch + 1,
            monitor=self.monitor,
            mode=self._monitor.mode,
            value=current,
            metrics=logs,
            kind=self.kind,
        )
        result = retention.apply_save(
            manifest.entries,
            self._saved,
            self._marks,
            entry,
            current=current,
            is_best=is_best,
            keep_top_k=self.keep_top_k,
            mode=self._monitor.mode,
        )
        manifest.entries = result.entries
        # Manifest first, files second: a crash in between leaves orphan files, never entries
        # pointing at nothing that a reader would trust.
        try:
            manifest.save()
        except CheckpointError as error:
            if not isinstance(error.__cause__, OSError):
                raise
            warnings.warn(
                f"ProgramCheckpoint could not record {rel} in {manifest.path} "
                f"({error.__cause__}); training goes on without this checkpoint.",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
        self._saved, self._marks = result.owned, result.marks
        for doomed in result.doomed:
            manifest.unlink_entry_file(doomed)
        return True

    async def _notify_saved(self, path: str, logs: dict[str, Any]) -> None:
        state = self.context
        callbacks = getattr(state, "callbacks", None)
        if isinstance(callbacks, CallbackList):
            await callbacks.call_others(self, "on_checkpoint_saved", path, dict(logs))

    async def _save(
        self, epoch: int, batch: int | None, logs: dict[str, Any] | None, final: bool = False
    ) -> None:
        logs = dict(logs or {})
        where = f"Epoch {epoch + 1}" + (f", batch {batch + 1}" if batch is not None else "")
        where += " (end of training)" if final else ""
        current = self._monitor.get(logs)
        is_best = current is not None and self._monitor.improved(current, self.best)
        if self.save_best_only and not is_best:
            if current is not None:
                self._say(f"{where}: {self.monitor} did not improve from {self._format_best()}")
                self._marks = retention.no_improvement(self._marks)
            return

        path = fill_template(self.filepath, self._fields, epoch, batch, logs)
        rel = relative_to(self.directory, path)
        if is_best and current is not None:
            self._say(
                f"{where}: {self.monitor} improved from {self._format_best()} to "
                f"{current:.5f}, saving {self.kind} to {path}"
            )
        else:
            self._say(f"{where}: saving {self.kind} to {path}")
        if not self._write(path) or not self._update_manifest(
            rel, epoch, batch, current, is_best, logs
        ):
            return
        await self._notify_saved(path, logs)
        if is_best and self.on_best:
            prefixed = {f"best={self.monitor}/{key}": value for key, value in logs.items()}
            await self._children.on_epoch_end(epoch, prefixed)

    # -- state and config --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "best": json_float(self.best),
            "best_path": self.best_path,
            "tolerances": {
                str(t.patience): {
                    "epochs_since_improvement": t.epochs_since_improvement,
                    "exhausted": t.exhausted,
                    "path": t.path,
                }
                for t in self._marks.tolerances
            },
            "batches_seen": self._batches_seen,
            "last_batch": self._last_batch,
            "current_epoch": self._current_epoch,
            "saved": list(self._saved),
            "on_best": [child.state_dict() for child in self.on_best],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        best = state.get("best")
        saved_tolerances = state.get("tolerances", {})
        tolerances = []
        for current in self._marks.tolerances:
            saved = saved_tolerances.get(str(current.patience))
            if saved is not None:
                current = Tolerance(
                    current.patience,
                    epochs_since_improvement=int(saved["epochs_since_improvement"]),
                    exhausted=bool(saved["exhausted"]),
                    path=saved.get("path"),
                )
            tolerances.append(current)
        self._batches_seen = int(state.get("batches_seen", 0))
        last_batch = state.get("last_batch")
        self._last_batch = None if last_batch is None else int(last_batch)
        self._current_epoch = int(state.get("current_epoch", 0))
        saved_paths = list(state.get("saved", []))
        for rel in saved_paths:
            # These paths steer keep_top_k's deletes: their real location must be inside.
            try:
                contained_path(self.directory, rel, follow_last=False)
            except PathEscapeError as error:
                raise CheckpointError(
                    f"ProgramCheckpoint's backed-up state names the checkpoint {error}"
                ) from None
        self._saved = saved_paths
        self._marks = Marks(
            None if best is None else float(best), state.get("best_path"), tuple(tolerances)
        )
        for child, child_state in zip(self.on_best, state.get("on_best", []), strict=False):
            child.load_state_dict(child_state)

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments as plain JSON.

        ``on_best`` children appear as ``{"class_name", "config"}`` descriptions (see
        :func:`promptfit.callbacks.serialize`), so they must be promptfit callbacks or
        registered with ``@pf.saving.register_serializable()``.
        """
        from promptfit.callbacks.serialization import serialize

        return {
            "filepath": self.filepath,
            "monitor": self.monitor,
            "verbose": self.verbose,
            "save_best_only": self.save_best_only,
            "save_variables_only": self.save_variables_only,
            "mode": self.mode,
            "save_freq": self.save_freq,
            "initial_value_threshold": self.initial_value_threshold,
            "keep_top_k": self.keep_top_k,
            "module_names": list(self.module_names) if self.module_names else None,
            "tolerances": list(self.tolerances) if self.tolerances else None,
            "on_best": [serialize(child) for child in self.on_best] or None,
            "strict": self.strict,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ProgramCheckpoint:
        from promptfit.callbacks.serialization import deserialize

        config = dict(config)
        specs = config.pop("on_best", None)
        children = [s if isinstance(s, Callback) else deserialize(s) for s in specs or []]
        return cls(**config, on_best=children or None)
