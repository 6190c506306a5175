"""``ProgramCheckpoint``: save the program (or its variables) during ``fit``."""

from __future__ import annotations

import inspect
import math
import os
import string
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptfit.callbacks._checks import check_optional_int, json_float
from promptfit.callbacks._monitoring import MetricWatcher
from promptfit.callbacks.callback import Callback
from promptfit.callbacks.callback_list import CallbackList
from promptfit.checkpoints.manifest import CheckpointManifest, make_entry
from promptfit.errors import CheckpointError, ConfigurationError, MonitorKeyError
from promptfit.saving.paths import PathEscapeError, contained_path

if TYPE_CHECKING:
    from promptfit.programs.program import Program

__all__ = ["ProgramCheckpoint"]

_TAGS = ("best", "tolerance_")


def _template_fields(filepath: str) -> list[str]:
    """The replacement fields of ``filepath``; only plain names are allowed.

    Attribute or index access (``{a.b}``, ``{a[0]}``), conversions (``{a!r}``), positional
    fields (``{}``, ``{0}``) and nested specs (``{a:{w}}``) are refused: the template is
    filled from the logs dict only, and anything richer would either fail at the end of the
    first (paid-for) epoch or read attributes of log values.
    """
    try:
        parsed = list(string.Formatter().parse(filepath))
    except ValueError as exc:
        raise ConfigurationError(
            f"ProgramCheckpoint: `filepath` {filepath!r} is not a valid format string ({exc}). "
            "Write literal braces as '{{' and '}}'."
        ) from exc
    fields: list[str] = []
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        problem = None
        if name == "" or name.isdigit():
            problem = "positional fields are not allowed; name a log key, e.g. {epoch:02d}"
        elif "." in name or "[" in name:
            problem = "attribute and index access are not allowed; use a plain log key"
        elif conversion:
            problem = f"conversions like !{conversion} are not allowed; use a format spec"
        elif spec and ("{" in spec or "}" in spec):
            problem = "nested fields in format specs are not allowed"
        if problem:
            raise ConfigurationError(
                f"ProgramCheckpoint: bad field {{{name}}} in `filepath` {filepath!r}: {problem}."
            )
        if name in ("epoch", "batch") and spec:
            try:
                format(1, spec)
            except ValueError as exc:
                raise ConfigurationError(
                    f"ProgramCheckpoint: format spec {spec!r} of {{{name}}} in `filepath` "
                    f"{filepath!r} does not apply to an integer ({exc})."
                ) from None
        fields.append(name)
    return fields


def _manifest_directory(filepath: str) -> Path:
    """The deepest directory of ``filepath`` that does not depend on a field."""
    fixed: list[str] = []
    for part in Path(filepath).parts[:-1]:
        if "{" in part or "}" in part:
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


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
    batches. With ``save_best_only``, only when ``monitor`` improves strictly on the best value
    so far (which starts at ``initial_value_threshold`` when given), as Keras does.

    **Retention.** ``keep_top_k=k`` keeps the ``k`` checkpoints with the best monitored values
    (ties: the newer wins) and deletes the files of the others, except that the newest
    checkpoint and the tagged ones below are never deleted.

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
        if not isinstance(filepath, str | os.PathLike) or not os.fspath(filepath):
            raise ConfigurationError(
                f"ProgramCheckpoint: `filepath` must be a non-empty path, got {filepath!r}."
            )
        self.filepath = str(os.fspath(filepath))
        self._fields = _template_fields(self.filepath)
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

        if save_freq != "epoch" and (
            isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1
        ):
            raise ConfigurationError(
                f"ProgramCheckpoint: `save_freq` must be 'epoch' or a positive number of "
                f"batches, got {save_freq!r}."
            )
        self.save_freq = save_freq
        if "batch" in self._fields and save_freq == "epoch":
            raise ConfigurationError(
                "ProgramCheckpoint: {batch} in `filepath` is only filled when `save_freq` is a "
                "number of batches; remove it or pass save_freq=N."
            )

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

        if module_names is not None:
            if isinstance(module_names, str) or not all(
                isinstance(n, str) and n for n in module_names
            ):
                raise ConfigurationError(
                    "ProgramCheckpoint: `module_names` must be a list of module names, got "
                    f"{module_names!r}."
                )
            module_names = list(dict.fromkeys(module_names))
            if not module_names:
                raise ConfigurationError("ProgramCheckpoint: `module_names` must not be empty.")
        self.module_names: list[str] | None = module_names

        if tolerances is not None:
            if isinstance(tolerances, int | str) or not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in tolerances
            ):
                raise ConfigurationError(
                    "ProgramCheckpoint: `tolerances` must be a list of positive integers "
                    f"(epochs without improvement), got {tolerances!r}."
                )
            tolerances = sorted(set(tolerances))
        self.tolerances: list[int] | None = tolerances or None

        if self.keep_top_k is not None or self.tolerances:
            needed = ["epoch"] + (["batch"] if save_freq != "epoch" else [])
            missing = [f for f in needed if f not in self._fields]
            if missing:
                raise ConfigurationError(
                    "ProgramCheckpoint: `keep_top_k` and `tolerances` keep several checkpoints, "
                    f"so `filepath` must give each one its own name; add "
                    f"{', '.join('{' + f + '}' for f in missing)} to {self.filepath!r}."
                )

        children = list(on_best or [])
        for child in children:
            if not isinstance(child, Callback):
                raise ConfigurationError(
                    "ProgramCheckpoint: `on_best` must hold pf.callbacks.Callback instances, "
                    f"got {type(child).__name__}."
                )
        self.on_best = children
        self._children = CallbackList(children)

        self.directory = _manifest_directory(self.filepath)
        self.best: float | None = self.initial_value_threshold
        self.best_path: str | None = None
        self._tolerance_state: dict[int, dict[str, Any]] = {
            t: {"epochs_since_improvement": 0, "exhausted": False, "path": None}
            for t in self.tolerances or []
        }
        self._batches_seen = 0
        self._current_epoch = 0
        self._saved: list[str] = []

    @property
    def kind(self) -> str:
        """``"variables"`` or ``"program"``: what each checkpoint file holds."""
        return "variables" if self.save_variables_only or self.module_names else "program"

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
        if self._batches_seen >= self.save_freq:
            self._batches_seen = 0
            await self._save(self._current_epoch, batch, logs)

    async def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._current_epoch = epoch
        if self.save_freq == "epoch":
            await self._save(epoch, None, logs)

    async def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        await self._children.on_train_end(logs)

    # -- saving --------------------------------------------------------------------------------
    def _format_best(self) -> str:
        value = self.best if self.best is not None else self._monitor.initial_best()
        return f"{value:.5f}"

    def _say(self, message: str) -> None:
        if self.verbose > 0:
            print(message, flush=True)

    def _format_path(self, epoch: int, batch: int | None, logs: dict[str, Any]) -> str:
        values: dict[str, Any] = dict(logs)
        values["epoch"] = epoch + 1
        if batch is not None:
            values["batch"] = batch + 1
        missing = [name for name in self._fields if name not in values]
        if missing:
            raise MonitorKeyError(
                f"ProgramCheckpoint cannot fill {{{missing[0]}}} in filepath {self.filepath!r}: "
                f"the logs have no key {missing[0]!r}. Available keys: {sorted(values)}. Use one "
                "of them ('val_' keys need validation data in fit(); per-batch saves only see "
                "training keys)."
            )
        try:
            return self.filepath.format(**values)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"ProgramCheckpoint cannot format filepath {self.filepath!r} with the logs: "
                f"{exc}. Check the format specs, e.g. {{val_reward:.3f}} for a float."
            ) from exc

    def _relative(self, path: str) -> str:
        rel = Path(os.path.relpath(path, self.directory)).as_posix()
        if rel == ".." or rel.startswith("../"):
            raise CheckpointError(
                f"ProgramCheckpoint: the checkpoint path {path!r} lies outside its directory "
                f"{str(self.directory)!r}; a log value must not contain path separators."
            )
        return rel

    def _write(self, path: str) -> None:
        try:
            if self.kind == "variables":
                self.program.save_variables(path, module_names=self.module_names)
            else:
                self.program.save(path)
        except OSError as exc:
            raise CheckpointError(f"ProgramCheckpoint could not write {path}: {exc}.") from exc

    def _record_improvement(self, current: float, rel: str) -> None:
        self.best = current
        self.best_path = rel
        for state in self._tolerance_state.values():
            if not state["exhausted"]:
                state["path"] = rel
                state["epochs_since_improvement"] = 0

    def _record_no_improvement(self) -> None:
        for tolerance, state in self._tolerance_state.items():
            if state["exhausted"]:
                continue
            state["epochs_since_improvement"] += 1
            if state["epochs_since_improvement"] >= tolerance:
                state["exhausted"] = True  # its checkpoint is frozen from now on

    def _forget_overwritten(self, rel: str, is_best: bool) -> None:
        """A save to an existing path replaces that file: drop tags it no longer deserves."""
        if self.best_path == rel and not is_best:
            self.best_path = None
        for state in self._tolerance_state.values():
            if state["path"] == rel and not (is_best and not state["exhausted"]):
                state["path"] = None

    def _tags(self) -> dict[str, list[str]]:
        tags: dict[str, list[str]] = {}
        if self.best_path is not None:
            tags.setdefault(self.best_path, []).append("best")
        for tolerance, state in self._tolerance_state.items():
            if state["path"] is not None:
                tags.setdefault(state["path"], []).append(f"tolerance_{tolerance}")
        return tags

    def _update_manifest(
        self, rel: str, epoch: int, batch: int | None, current: float | None, logs: dict[str, Any]
    ) -> None:
        manifest = CheckpointManifest.load(self.directory)
        manifest.prune_missing()
        manifest.add(
            make_entry(
                rel,
                epoch=epoch + 1,
                batch=None if batch is None else batch + 1,
                monitor=self.monitor,
                mode=self._monitor.mode,
                value=current,
                metrics=logs,
                kind=self.kind,
            )
        )
        present = {entry["path"] for entry in manifest.entries}
        self._saved = [p for p in self._saved if p != rel and p in present] + [rel]
        owned = set(self._saved)

        tags = self._tags()
        for entry in manifest.entries:
            if entry["path"] in owned:
                kept = [t for t in entry.get("tags", []) if not t.startswith(_TAGS)]
                entry["tags"] = kept + tags.get(entry["path"], [])

        doomed: list[dict[str, Any]] = []
        if self.keep_top_k is not None:
            doomed = self._beyond_top_k(manifest, owned, protected={rel, *tags})
            for entry in doomed:
                manifest.remove(entry["path"])
            gone = {entry["path"] for entry in doomed}
            self._saved = [p for p in self._saved if p not in gone]
        # Manifest first, files second: a crash in between leaves orphan files, never entries
        # pointing at nothing that a reader would trust.
        manifest.save()
        for entry in doomed:
            manifest.unlink_entry_file(entry)

    def _beyond_top_k(
        self, manifest: CheckpointManifest, owned: set[str], protected: set[str]
    ) -> list[dict[str, Any]]:
        sign = 1.0 if self._monitor.mode == "max" else -1.0

        def rank(item: tuple[int, dict[str, Any]]) -> tuple[bool, float, int]:
            index, entry = item
            value = entry.get("value")
            known = isinstance(value, int | float) and not isinstance(value, bool)
            return (known, sign * value if known else 0.0, index)  # later index wins ties

        candidates = [(i, e) for i, e in enumerate(manifest.entries) if e["path"] in owned]
        ranked = sorted(candidates, key=rank, reverse=True)
        keep = {e["path"] for _, e in ranked[: self.keep_top_k]} | protected
        return [e for _, e in candidates if e["path"] not in keep]

    async def _notify_saved(self, path: str, logs: dict[str, Any]) -> None:
        state = self.context
        callbacks = getattr(state, "callbacks", None)
        if callbacks is None:
            return
        for callback in callbacks:
            if callback is self:
                continue  # never recurse into ourselves
            if getattr(type(callback), "on_checkpoint_saved", None) is Callback.on_checkpoint_saved:
                continue
            result = callback.on_checkpoint_saved(path, dict(logs))
            if inspect.isawaitable(result):
                await result

    async def _save(self, epoch: int, batch: int | None, logs: dict[str, Any] | None) -> None:
        logs = dict(logs or {})
        where = f"Epoch {epoch + 1}" + (f", batch {batch + 1}" if batch is not None else "")
        current = self._monitor.get(logs)
        is_best = current is not None and self._monitor.improved(current, self.best)
        if self.save_best_only and not is_best:
            if current is not None:
                self._say(f"{where}: {self.monitor} did not improve from {self._format_best()}")
                self._record_no_improvement()
            return

        path = self._format_path(epoch, batch, logs)
        rel = self._relative(path)
        if is_best and current is not None:
            self._say(
                f"{where}: {self.monitor} improved from {self._format_best()} to "
                f"{current:.5f}, saving {self.kind} to {path}"
            )
        else:
            self._say(f"{where}: saving {self.kind} to {path}")
        self._write(path)

        self._forget_overwritten(rel, is_best)
        if current is not None:
            if is_best:
                self._record_improvement(current, rel)
            else:
                self._record_no_improvement()
        self._update_manifest(rel, epoch, batch, current, logs)
        await self._notify_saved(path, logs)
        if is_best and self.on_best:
            prefixed = {f"best={self.monitor}/{key}": value for key, value in logs.items()}
            await self._children.on_epoch_end(epoch, prefixed)

    # -- state and config --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "best": json_float(self.best),
            "best_path": self.best_path,
            "tolerances": {str(t): dict(state) for t, state in self._tolerance_state.items()},
            "batches_seen": self._batches_seen,
            "current_epoch": self._current_epoch,
            "saved": list(self._saved),
            "on_best": [child.state_dict() for child in self.on_best],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        best = state.get("best")
        self.best = None if best is None else float(best)
        self.best_path = state.get("best_path")
        saved_tolerances = state.get("tolerances", {})
        for tolerance, current in self._tolerance_state.items():
            saved = saved_tolerances.get(str(tolerance))
            if saved is not None:
                current.update(
                    epochs_since_improvement=int(saved["epochs_since_improvement"]),
                    exhausted=bool(saved["exhausted"]),
                    path=saved.get("path"),
                )
        self._batches_seen = int(state.get("batches_seen", 0))
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
