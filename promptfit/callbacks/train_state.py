"""``TrainState``: the snapshot of a run passed to :class:`~promptfit.callbacks.Events` handlers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from promptfit.programs.program import Program

__all__ = ["TrainState"]


@dataclass(kw_only=True)
class TrainState:
    """Where training is when an event fires, plus a way to stop it.

    One object per event: handlers may keep it, it is never mutated afterwards. The counters
    are copied from the fit's :class:`~promptfit.training.context.FitContext`, so numbers
    agree with backups (and are right on a resumed epoch).

    Attributes:
        event: The event name (``"epoch_end"``...).
        program: The program being trained (or evaluated).
        epoch: The current epoch index (0-based).
        step: Training steps (batches) completed in the current epoch: ``b`` at
            ``step_start`` of batch ``b``, ``b + 1`` at its ``step_end``, the epoch's count at
            ``epoch_end``.
        global_step: Steps completed over the whole run
            (``epoch * steps_per_epoch + step``; it continues across a resume).
        num_epochs: The ``epochs`` given to ``fit``.
        max_steps: ``num_epochs * steps_per_epoch``, or -1 outside ``fit``.
        batch: The batch index, for ``step_start``/``step_end``; ``None`` otherwise.
        logs: The hook's logs (rewards, metrics, usage; ``val_*`` at ``epoch_end``).
        checkpoint_path: The saved file or directory, for ``checkpoint_saved``.
        error: The exception, for ``error``.

    Example:
        ```python
        import promptfit as pf

        events = pf.callbacks.Events()

        @events.on("step_end")
        def stop_when_perfect(state: pf.callbacks.TrainState) -> None:
            if state.logs.get("reward", 0.0) >= 1.0:
                state.stop_training()
        ```
    """

    event: str = ""
    program: Program | None = field(default=None, repr=False)
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    num_epochs: int = 0
    max_steps: int = -1
    batch: int | None = None
    logs: dict[str, Any] = field(default_factory=dict)
    checkpoint_path: str | None = None
    error: BaseException | None = None

    def stop_training(self) -> None:
        """Ask ``fit`` to stop after the current batch (validation and epoch end still run)."""
        if self.program is None:
            raise RuntimeError("This TrainState has no program to stop.")
        self.program.stop_training = True

    @property
    def should_stop(self) -> bool:
        """Whether stopping has been requested (by any callback)."""
        return bool(self.program is not None and self.program.stop_training)
