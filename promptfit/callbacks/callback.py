"""The base class of callbacks: hooks called by ``fit``, ``evaluate`` and ``predict``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from promptfit.programs.program import Program
    from promptfit.training.context import RunContext

__all__ = ["HOOKS", "Callback"]

HOOKS = (
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_test_begin",
    "on_test_end",
    "on_test_batch_begin",
    "on_test_batch_end",
    "on_predict_begin",
    "on_predict_end",
    "on_predict_batch_begin",
    "on_predict_batch_end",
    "on_checkpoint_saved",
    "on_train_error",
)


class Callback:
    """Base class for callbacks, with the Keras hook names.

    Override any hook; each may be a plain method or ``async def``. Hooks receive ``logs``, a
    dict of the values logged so far (``reward``, metric names, ``lm_calls``, ``tokens``,
    ``cost``, ``failed_calls`` and their ``val_`` versions at epoch end).

    Attributes:
        program: The program being trained (set before ``on_train_begin``).
        params: ``{"epochs", "steps", "batch_size", "verbose", ...}`` for the current run.
        context: The run being run, or ``None`` outside one: a
            :class:`~promptfit.training.context.FitContext` from ``on_train_begin`` through
            ``on_train_end`` of a ``fit`` (current ``epoch`` and ``step`` -- right on a resumed
            epoch too --, ``last_batch``, the data, ``history``, ``optimizer``, the
            ``callbacks``, the resumable ``progress``), or a
            :class:`~promptfit.training.context.RunContext` from ``on_test_begin`` through
            ``on_test_end`` of an ``evaluate`` (``on_predict_begin`` through
            ``on_predict_end`` of a ``predict``, with no targets). Set by
            :class:`~promptfit.callbacks.CallbackList`; read it in a hook, do not keep it.

    Callbacks whose progress must survive a crash implement :meth:`state_dict` and
    :meth:`load_state_dict`; :class:`~promptfit.callbacks.BackupAndRestore` saves and restores
    them. Everything configurable implements :meth:`get_config` so a run can be described in
    JSON or YAML and rebuilt with :func:`promptfit.callbacks.deserialize`.

    Example:
        ```python
        import promptfit as pf

        class PrintReward(pf.callbacks.Callback):
            async def on_epoch_end(self, epoch, logs=None):
                print(epoch, (logs or {}).get("val_reward"))
        ```
    """

    #: The current run (see the class docstring); a class default, so that a subclass whose
    #: ``__init__`` forgets ``super().__init__()`` still reads ``None`` outside a run.
    context: RunContext | None = None

    def __init__(self) -> None:
        self._program: Program | None = None
        self.params: dict[str, Any] = {}
        self.context = None

    @property
    def program(self) -> Program:
        if self._program is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a program yet.")
        return self._program

    def set_program(self, program: Program) -> None:
        self._program = program

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def set_context(self, context: RunContext | None) -> None:
        """Called by :class:`~promptfit.callbacks.CallbackList` around each run."""
        self.context = context

    # -- hooks (no-ops; CallbackList skips the ones a subclass does not override) -----------
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> Any: ...
    def on_train_end(self, logs: dict[str, Any] | None = None) -> Any: ...
    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> Any: ...
    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> Any: ...
    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> Any: ...
    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> Any: ...
    def on_test_begin(self, logs: dict[str, Any] | None = None) -> Any: ...
    def on_test_end(self, logs: dict[str, Any] | None = None) -> Any: ...
    def on_test_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> Any: ...
    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> Any: ...
    def on_predict_begin(self, logs: dict[str, Any] | None = None) -> Any: ...
    def on_predict_end(self, logs: dict[str, Any] | None = None) -> Any: ...
    def on_predict_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> Any: ...
    def on_predict_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> Any: ...
    def on_checkpoint_saved(self, path: str, logs: dict[str, Any] | None = None) -> Any: ...
    def on_train_error(self, error: BaseException) -> Any: ...

    # -- state and config --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable progress to back up (empty for stateless callbacks)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        return None

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments, as plain JSON."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Callback:
        return cls(**config)
