"""Everything a fit needs to resume exactly where it stopped.

:class:`FitState` is the single owner of resumable training state. Callbacks such as
:class:`~promptfit.callbacks.BackupAndRestore` call :meth:`FitState.state_dict` and
:meth:`FitState.load_state_dict` instead of reaching into the trainer.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from promptfit.errors import BackupMismatchError
from promptfit.language_models.scope import RunScope, current_scope
from promptfit.language_models.usage import Usage

if TYPE_CHECKING:
    from promptfit.callbacks.callback_list import CallbackList
    from promptfit.metrics.metric import Metric
    from promptfit.optimizers.optimizer import Optimizer
    from promptfit.programs.program import Program
    from promptfit.training.trainer import BatchOutcome

__all__ = ["FitState", "data_fingerprint"]


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _dump(rows: list[Any]) -> list[Any]:
    return [r.model_dump(mode="json") if hasattr(r, "model_dump") else r for r in rows]


def program_structure(program: Program) -> list[Any]:
    """Module names, types and variable paths: what must match for a backup to apply."""
    return [
        (m.name, type(m).__name__, sorted(v.path for v in m.own_variables)) for m in program.modules
    ]


def data_fingerprint(
    program: Program,
    xs: list[Any],
    ys: list[Any],
    val_xs: list[Any],
    val_ys: list[Any],
    epochs: int,
    batch_size: int,
) -> dict[str, Any]:
    return {
        "program structure": _digest(program_structure(program)),
        "epochs": epochs,
        "batch_size": batch_size,
        "training data": _digest([_dump(xs), _dump(ys)]),
        "validation data": _digest([_dump(val_xs), _dump(val_ys)]),
    }


@dataclass
class FitState:
    """Progress of one ``fit`` call."""

    seed: int
    epochs: int
    epoch: int
    step: int
    steps_per_epoch: int
    fingerprint: dict[str, Any]
    reward_total: float = 0.0
    reward_count: int = 0
    epoch_usage_start: Usage = field(default_factory=Usage)
    # Identifies this fit across a crash and its resume (restored from the backup): LM replies
    # are cached with the run id and step that paid for them (see ``call_origin``).
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # The seed passed to fit (``None`` when fit drew one). A backup brings its own seed; only a
    # seed the user chose can contradict it, and then BackupAndRestore refuses the resume.
    requested_seed: int | None = None
    callbacks: CallbackList | None = None
    history: Any = None
    optimizer: Optimizer | None = None
    metrics: list[Metric] = field(default_factory=list)
    # The fit's data, for callbacks that look at examples (PredictionLogger). Not saved by
    # state_dict: a resumed fit is given the same data again, and the fingerprint checks it.
    xs: list[Any] = field(default_factory=list, repr=False)
    ys: list[Any] = field(default_factory=list, repr=False)
    val_xs: list[Any] = field(default_factory=list, repr=False)
    val_ys: list[Any] = field(default_factory=list, repr=False)
    # The latest training batch (transient, valid in on_train_batch_end): its size and how many
    # of its predictions failed (``None``), which usage counters cannot tell (TerminateOnError).
    batch_examples: int = 0
    batch_failed_predictions: int = 0
    # The fit's own usage counters (context-local), so that a fit sharing an LM with another
    # run saves and restores its own usage only. ``None``: the LMs' global totals.
    usage_scope: RunScope | None = field(default_factory=current_scope, repr=False)

    def _usage_of(self, lm: Any) -> Usage:
        return lm.usage if self.usage_scope is None else self.usage_scope.usage_of(lm)

    @property
    def mean_reward(self) -> float:
        return self.reward_total / self.reward_count if self.reward_count else 0.0

    @property
    def global_step(self) -> int:
        return self.epoch * self.steps_per_epoch + self.step

    def origin(self, epoch: int, where: int | str) -> str:
        """The ``call_origin`` of LM calls made at ``where`` (a step, ``"end"``, ``"val"``)."""
        return f"{self.run_id}:{epoch}:{where}"

    def begin_epoch(self, metrics: list[Metric], usage: Usage) -> None:
        self.metrics = metrics
        self.reward_total, self.reward_count = 0.0, 0
        for metric in metrics:
            metric.reset_state()
        self.epoch_usage_start = Usage()
        self.epoch_usage_start.load_state_dict(usage.state_dict())

    def record_batch(self, outcome: BatchOutcome, metrics: list[Metric]) -> None:
        self.metrics = metrics
        for yt, yp, r in zip(outcome.y, outcome.predictions, outcome.rewards, strict=True):
            for metric in metrics:
                metric.update_state(yt, yp, r)
        self.reward_total += sum(outcome.rewards)
        self.reward_count += len(outcome.rewards)
        self.batch_examples = len(outcome.predictions)
        self.batch_failed_predictions = sum(p is None for p in outcome.predictions)

    # -- persistence -----------------------------------------------------------------------
    @staticmethod
    def callback_key(index: int, callback: Any) -> str:
        return f"{index}:{type(callback).__name__}"

    def state_dict(self, program: Program, exclude: Any = None) -> dict[str, Any]:
        """A JSON-serialisable snapshot of the run (``exclude``: a callback to leave out)."""
        callbacks: dict[str, Any] = {}
        if self.callbacks is not None:
            for index, callback in enumerate(self.callbacks):
                # Stateless callbacks (a progress bar) are not keyed, so adding or dropping one
                # between a crash and the resume is not reported as a changed callback list.
                if callback is not exclude and (state := callback.state_dict()):
                    callbacks[self.callback_key(index, callback)] = state
        lms = program.all_language_models()
        return {
            "run_id": self.run_id,
            "seed": self.seed,
            "epochs": self.epochs,
            "epoch": self.epoch,
            "step": self.step,
            "fingerprint": self.fingerprint,
            "reward_total": self.reward_total,
            "reward_count": self.reward_count,
            "metrics": {m.name: m.state_dict() for m in program.metrics},
            "epoch_usage_start": self.epoch_usage_start.state_dict(),
            "usage": {
                f"{i}:{lm.name}": self._usage_of(lm).state_dict() for i, lm in enumerate(lms)
            },
            "variables": program.get_variables(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "callbacks": callbacks,
            "stop_training": bool(getattr(program, "stop_training", False)),
        }

    def check_compatible(self, saved: dict[str, Any]) -> None:
        """Raise :class:`BackupMismatchError` naming every component that differs."""
        theirs = saved.get("fingerprint", {})
        differs = [key for key, value in self.fingerprint.items() if theirs.get(key) != value]
        if differs:
            details = ", ".join(
                f"{key} (backup: {theirs.get(key)!r}, now: {self.fingerprint[key]!r})"
                for key in differs
            )
            raise BackupMismatchError(
                f"The backup was made by a different run: {details}. Use another backup_dir, "
                "or delete the old backup to start over."
            )

    def load_state_dict(self, program: Program, saved: dict[str, Any], exclude: Any = None) -> None:
        """Restore a snapshot made by :meth:`state_dict` (after :meth:`check_compatible`)."""
        self.check_compatible(saved)
        self.run_id = str(saved.get("run_id") or self.run_id)
        self.seed = saved["seed"]
        self.epoch = saved["epoch"]
        self.step = saved["step"]
        self.reward_total = saved["reward_total"]
        self.reward_count = saved["reward_count"]
        metric_states = saved.get("metrics", {})
        for metric in program.metrics:
            if metric.name in metric_states:
                metric.load_state_dict(metric_states[metric.name])
        self.metrics = list(program.metrics)
        self.epoch_usage_start = Usage()
        self.epoch_usage_start.load_state_dict(saved["epoch_usage_start"])
        usage = saved.get("usage", {})
        for i, lm in enumerate(program.all_language_models()):
            key = f"{i}:{lm.name}"
            if key in usage:
                if self.usage_scope is None:
                    lm.usage.load_state_dict(usage[key])
                else:
                    self.usage_scope.restore_usage(lm, usage[key])
        program.set_variables(saved["variables"])
        # A run that an early-stopping callback had already stopped must not train on.
        program.stop_training = bool(saved.get("stop_training", False))
        if self.optimizer is not None and saved.get("optimizer") is not None:
            self.optimizer.load_state_dict(saved["optimizer"])
        if self.callbacks is not None:
            states = saved.get("callbacks", {})
            for index, callback in enumerate(self.callbacks):
                key = self.callback_key(index, callback)
                if callback is not exclude and key in states:
                    callback.load_state_dict(states[key])
