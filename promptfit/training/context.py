"""The typed context of one ``fit`` or ``evaluate`` run, as callbacks and the optimizer see it.

Why a context: callbacks used to reach the run through ``getattr(program, "fit_state", None)``
and each tracked the current epoch itself ("a resumed epoch has no on_epoch_begin"). Keras
gives every callback ``self.model`` and ``self.params``; promptfit adds one object that says,
at every hook, which epoch and step the run is at (also on a resumed epoch), what the last
batch produced, and what the run holds (data, History, optimizer, the callback list).

:class:`~promptfit.callbacks.CallbackList` hands it to every callback as
:attr:`Callback.context <promptfit.callbacks.Callback.context>` before ``on_train_begin``
(``fit``) or ``on_test_begin`` (``evaluate``), and takes it back after
``on_train_end``/``on_test_end`` (each callback gets what it had before: ``None`` outside any
run). It lives only as long as the run; what must survive a crash
is :class:`~promptfit.training.state.FitProgress`, which the context snapshots together with
the program, optimizer and callback states (:meth:`FitContext.state_dict`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from promptfit.language_models.scope import RunScope, current_scope
from promptfit.training.state import FitProgress

if TYPE_CHECKING:
    from promptfit.callbacks.callback_list import CallbackList
    from promptfit.callbacks.history import History
    from promptfit.language_models.usage import Usage
    from promptfit.optimizers.optimizer import Optimizer
    from promptfit.programs.program import Program
    from promptfit.training.outcome import BatchOutcome

__all__ = ["FitContext", "FitParams", "RunContext"]


@dataclass(eq=False, kw_only=True)
class RunContext:
    """What every run (``evaluate``, ``predict``, or ``fit`` through :class:`FitContext`)
    tells callbacks.

    Attributes:
        program: The program being run.
        callbacks: The run's callback list (every callback of the run, defaults included).
        params: The run's parameters (as ``Callback.params``).
        xs: The run's inputs (the training inputs in ``fit``).
        ys: The run's targets (empty in ``predict``).
        step: Batches completed so far (in ``fit``: in the current epoch).
        last_batch: The latest batch (in ``fit``: training batch) once it is scored: valid in
            ``on_train_batch_end``/``on_test_batch_end`` and after.
    """

    program: Program
    callbacks: CallbackList
    params: dict[str, Any] = field(default_factory=dict)
    xs: list[Any] = field(default_factory=list, repr=False)
    ys: list[Any] = field(default_factory=list, repr=False)
    step: int = 0
    last_batch: BatchOutcome | None = field(default=None, repr=False)


@dataclass(eq=False, kw_only=True)
class FitContext(RunContext):
    """The context of one ``fit``: counters that are always right, and the run's objects.

    ``epoch`` is the epoch being run from its first batch through its ``on_epoch_end`` --
    also when a backup resumed it in the middle, where no ``on_epoch_begin`` is called -- and
    ``step`` the batches of it completed. A restore in ``on_train_begin`` updates both.
    (``progress.epoch`` differs at an epoch end: it is already the epoch a resume would start.)

    Attributes:
        progress: The resumable counters (what a backup saves).
        epoch: The current epoch (0-based).
        val_xs: Validation inputs (empty without validation).
        val_ys: Validation targets.
        history: The run's :class:`~promptfit.callbacks.History`.
        optimizer: The compiled optimizer, built for this run.
        usage_scope: The fit's own usage counters (context-local), so a fit sharing an LM with
            another run saves and restores its own usage only; ``None``: the LMs' totals.
    """

    progress: FitProgress
    epoch: int = 0
    val_xs: list[Any] = field(default_factory=list, repr=False)
    val_ys: list[Any] = field(default_factory=list, repr=False)
    history: History | None = field(default=None, repr=False)
    optimizer: Optimizer | None = field(default=None, repr=False)
    usage_scope: RunScope | None = field(default_factory=current_scope, repr=False)

    # -- counters (read through, so there is one copy) -------------------------------------
    @property
    def epochs(self) -> int:
        """The ``epochs`` given to ``fit``."""
        return self.progress.epochs

    @property
    def steps_per_epoch(self) -> int:
        return self.progress.steps_per_epoch

    @property
    def seed(self) -> int:
        return self.progress.seed

    @property
    def global_step(self) -> int:
        """Steps completed over the whole run (``epoch * steps_per_epoch + step``)."""
        return self.epoch * self.progress.steps_per_epoch + self.step

    # -- snapshot of the whole run -----------------------------------------------------------
    @staticmethod
    def callback_key(index: int, callback: Any) -> str:
        return f"{index}:{type(callback).__name__}"

    def _usage_of(self, lm: Any) -> Usage:
        return lm.usage if self.usage_scope is None else self.usage_scope.usage_of(lm)

    def check_compatible(self, saved: dict[str, Any]) -> None:
        """Raise :class:`~promptfit.errors.BackupMismatchError` if ``saved`` is another run's."""
        self.progress.check_compatible(saved)

    def state_dict(self, exclude: Any = None) -> dict[str, Any]:
        """A JSON-serialisable snapshot of the run (``exclude``: a callback to leave out).

        The keys are the backup file's ``fit_state`` object, unchanged since the format's
        version 1: the progress counters, then the metric, usage, variable, optimizer and
        callback states.
        """
        program = self.program
        callbacks: dict[str, Any] = {}
        for index, callback in enumerate(self.callbacks):
            # Stateless callbacks (a progress bar) are not keyed, so adding or dropping one
            # between a crash and the resume is not reported as a changed callback list.
            if callback is not exclude and (state := callback.state_dict()):
                callbacks[self.callback_key(index, callback)] = state
        lms = program.all_language_models()
        saved = self.progress.state_dict()
        saved.update(
            {
                "metrics": {m.name: m.state_dict() for m in program.metrics},
                "usage": {
                    f"{i}:{lm.name}": self._usage_of(lm).state_dict() for i, lm in enumerate(lms)
                },
                "variables": program.get_variables(),
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
                "callbacks": callbacks,
                "stop_training": bool(getattr(program, "stop_training", False)),
            }
        )
        return saved

    def load_state_dict(self, saved: dict[str, Any], exclude: Any = None) -> None:
        """Restore a snapshot made by :meth:`state_dict` (after :meth:`check_compatible`)."""
        program = self.program
        self.progress.load_state_dict(saved)
        self.epoch, self.step = self.progress.epoch, self.progress.step
        metric_states = saved.get("metrics", {})
        for metric in program.metrics:
            if metric.name in metric_states:
                metric.load_state_dict(metric_states[metric.name])
        self.progress.rewards.metrics = list(program.metrics)
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
        states = saved.get("callbacks", {})
        for index, callback in enumerate(self.callbacks):
            key = self.callback_key(index, callback)
            if callback is not exclude and key in states:
                callback.load_state_dict(states[key])


class DeprecatedFitState:
    """What ``program.fit_state`` returns now: the last fit's context, then its counters.

    Reads like the former ``FitState`` (``epoch``, ``step``, ``xs``, ``callbacks``,
    ``state_dict(program)``...). Kept only so user code keeps working while it moves to
    ``Callback.context``.
    """

    def __init__(self, context: FitContext) -> None:
        self._context = context

    @property
    def batch_examples(self) -> int:
        batch = self._context.last_batch
        return 0 if batch is None else len(batch.predictions)

    @property
    def batch_failed_predictions(self) -> int:
        batch = self._context.last_batch
        return 0 if batch is None else batch.failed_predictions

    @property
    def epoch(self) -> int:
        return self._context.progress.epoch

    @property
    def step(self) -> int:
        return self._context.progress.step

    def state_dict(self, program: Any = None, exclude: Any = None) -> dict[str, Any]:
        return self._context.state_dict(exclude)

    def load_state_dict(self, program: Any, saved: dict[str, Any], exclude: Any = None) -> None:
        self._context.load_state_dict(saved, exclude)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        context = self.__dict__["_context"]
        for source in (context, context.progress):
            try:
                return getattr(source, name)
            except AttributeError:
                continue
        raise AttributeError(f"FitState has no attribute {name!r}")


class FitParams(dict[str, Any]):
    """``Callback.params`` of a ``fit``: a plain dict, plus the deprecated ``"validation"`` key.

    ``params`` carried both ``validation`` and Keras' ``do_validation`` with the same value;
    only ``do_validation`` remains. Reading ``params["validation"]`` (or ``.get``) still works
    and warns, so code written for the old key keeps running while it is updated.
    """

    def __missing__(self, key: str) -> Any:
        if key == "validation" and "do_validation" in self:
            _warn_validation_key()
            return self["do_validation"]
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        if key == "validation" and key not in self and "do_validation" in self:
            _warn_validation_key()
            return self["do_validation"]
        return super().get(key, default)


def _warn_validation_key() -> None:
    warnings.warn(
        "Callback.params['validation'] is deprecated; read params['do_validation'] (Keras' name).",
        DeprecationWarning,
        stacklevel=3,
    )
