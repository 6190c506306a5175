"""The resumable counters of a fit: where it is, and what its half-finished epoch added up.

:class:`FitProgress` holds only what a backup must bring back and nothing short-lived (data,
callbacks, the optimizer and the last batch live in the run's
:class:`~promptfit.training.context.FitContext`, which snapshots the whole run with
:meth:`~promptfit.training.context.FitContext.state_dict`). ``FitState`` is the deprecated
former name, from when one object held both.
"""

from __future__ import annotations

import hashlib
import json
import uuid
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from promptfit.errors import BackupMismatchError
from promptfit.language_models.usage import Usage
from promptfit.training.outcome import RewardAccumulator

if TYPE_CHECKING:
    from promptfit.metrics.metric import Metric
    from promptfit.programs.program import Program

__all__ = ["FitProgress", "data_fingerprint"]


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
class FitProgress:
    """Where a fit is and what its current epoch has accumulated: the resumable counters.

    Attributes:
        seed: The fit's seed (shuffling and the optimizer); a resume brings its own.
        epochs: The ``epochs`` given to ``fit``.
        epoch: The epoch a resume starts at: the running epoch during it, the next one once
            it has ended (set before ``on_epoch_end``, so an epoch-end backup resumes after it).
        step: Batches of ``epoch`` already done (0 at an epoch boundary).
        steps_per_epoch: Training batches per epoch.
        fingerprint: What must match for a backup to apply (see :func:`data_fingerprint`).
        rewards: The epoch's running reward sum and the program's metrics.
        epoch_usage_start: LM usage when the epoch began (the epoch's usage logs count from it).
        run_id: Identifies this fit across a crash and its resume: LM replies are cached with
            the run id and step that paid for them (see ``call_origin``).
    """

    seed: int
    epochs: int
    epoch: int
    step: int
    steps_per_epoch: int
    fingerprint: dict[str, Any]
    rewards: RewardAccumulator = field(default_factory=RewardAccumulator)
    epoch_usage_start: Usage = field(default_factory=Usage)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # The seed passed to fit (``None`` when fit drew one); not saved: a backup brings its own
    # seed, and only a seed the user chose can contradict it (BackupAndRestore then refuses).
    requested_seed: int | None = None

    @property
    def reward_total(self) -> float:
        return self.rewards.total

    @property
    def reward_count(self) -> int:
        return self.rewards.count

    @property
    def mean_reward(self) -> float:
        return self.rewards.mean_reward

    @property
    def global_step(self) -> int:
        return self.epoch * self.steps_per_epoch + self.step

    def origin(self, epoch: int, where: int | str) -> str:
        """The ``call_origin`` of LM calls made at ``where`` (a step, ``"end"``, ``"val"``)."""
        return f"{self.run_id}:{epoch}:{where}"

    def begin_epoch(self, metrics: list[Metric], usage: Usage) -> None:
        """Zero the epoch's accumulators (metrics included) and note the usage it starts at."""
        self.rewards.metrics = metrics
        self.rewards.reset()
        self.epoch_usage_start = Usage()
        self.epoch_usage_start.load_state_dict(usage.state_dict())

    # -- persistence -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The counters, under the backup file's key names (``fit_state`` in a backup)."""
        return {
            "run_id": self.run_id,
            "seed": self.seed,
            "epochs": self.epochs,
            "epoch": self.epoch,
            "step": self.step,
            "fingerprint": self.fingerprint,
            "reward_total": self.rewards.total,
            "reward_count": self.rewards.count,
            "epoch_usage_start": self.epoch_usage_start.state_dict(),
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

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore the counters of :meth:`state_dict` (after :meth:`check_compatible`)."""
        self.check_compatible(saved)
        self.run_id = str(saved.get("run_id") or self.run_id)
        self.seed = saved["seed"]
        self.epoch = saved["epoch"]
        self.step = saved["step"]
        self.rewards.total = saved["reward_total"]
        self.rewards.count = saved["reward_count"]
        self.epoch_usage_start = Usage()
        self.epoch_usage_start.load_state_dict(saved["epoch_usage_start"])


def __getattr__(name: str) -> Any:
    # ``FitState`` held the counters and the run's short-lived objects together; the
    # counters are FitProgress, the rest is the callbacks' FitContext.
    if name == "FitState":
        warnings.warn(
            "promptfit.training.state.FitState is deprecated: the resumable counters are "
            "FitProgress, and callbacks read the run through Callback.context (a FitContext).",
            DeprecationWarning,
            stacklevel=2,
        )
        return FitProgress
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
