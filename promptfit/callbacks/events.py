"""``Events``: register handlers for named training events with a decorator."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from promptfit.callbacks.callback import Callback
from promptfit.callbacks.train_state import TrainState
from promptfit.errors import ConfigurationError
from promptfit.training.context import FitContext

__all__ = ["EVENTS", "Events"]

EVENTS = (
    "train_start",
    "train_end",
    "epoch_start",
    "epoch_end",
    "step_start",
    "step_end",
    "eval_start",
    "eval_end",
    "checkpoint_saved",
    "error",
)

Handler = TypeVar("Handler", bound=Callable[..., Any])


def _check_event(event: Any) -> str:
    if event not in EVENTS:
        raise ConfigurationError(f"Unknown event {event!r}; valid events are: {', '.join(EVENTS)}.")
    return event


class Events(Callback):
    """Event-style callbacks: decorate functions instead of subclassing.

    A lighter alternative to :class:`~promptfit.callbacks.Callback` for one-off logic
    (notifications, custom stopping rules, logging): each handler gets a
    :class:`~promptfit.callbacks.TrainState` with the epoch, step counters, logs, the program,
    and ``stop_training()``. Handlers may be sync or ``async def``; they run in registration
    order, inside the training loop, so an exception in a handler stops training (it is not
    swallowed).

    Events and the hooks they come from:

    ============================  =====================================================
    ``train_start``/``train_end``  ``on_train_begin``/``on_train_end`` (always runs)
    ``epoch_start``/``epoch_end``  ``on_epoch_begin``/``on_epoch_end``
    ``step_start``/``step_end``    ``on_train_batch_begin``/``on_train_batch_end``
    ``eval_start``/``eval_end``    ``on_test_begin``/``on_test_end`` (validation in
                                   ``fit``, and ``evaluate``)
    ``checkpoint_saved``           ``on_checkpoint_saved`` (``state.checkpoint_path``)
    ``error``                      ``on_train_error`` (``state.error``), before
                                   ``train_end``
    ============================  =====================================================

    On a resumed ``fit``, :class:`~promptfit.callbacks.BackupAndRestore` restores the run
    after every other ``on_train_begin``, so ``train_start`` still shows the counters of a
    fresh start; from the first ``step_start`` on they are the restored ones.

    Example:
        ```python
        import promptfit as pf

        events = pf.callbacks.Events()

        @events.on("epoch_end")
        async def report(state: pf.callbacks.TrainState) -> None:
            print(f"epoch {state.epoch + 1}/{state.num_epochs}: {state.logs.get('val_reward')}")

        @events.on("step_end")
        def stop_on_failures(state: pf.callbacks.TrainState) -> None:
            if state.logs.get("failed_calls", 0) > 10:
                state.stop_training()

        # await program.fit(x, y, epochs=5, callbacks=[events])
        ```
    """

    def __init__(self) -> None:
        super().__init__()
        self._handlers: dict[str, list[Callable[..., Any]]] = {event: [] for event in EVENTS}

    # -- registration ------------------------------------------------------------------------
    def on(self, event: str, handler: Handler | None = None) -> Any:
        """Register ``handler`` for ``event``; without ``handler``, return a decorator.

        Raises:
            ConfigurationError: ``event`` is not one of :data:`EVENTS`, or the handler is not
                callable.
        """
        _check_event(event)

        def register(function: Handler) -> Handler:
            if not callable(function):
                raise ConfigurationError(
                    f"An Events handler for {event!r} must be a function, got {function!r}."
                )
            self._handlers[event].append(function)
            return function

        return register if handler is None else register(handler)

    def handlers(self, event: str) -> list[Callable[..., Any]]:
        """The handlers registered for ``event``, in call order."""
        return list(self._handlers[_check_event(event)])

    async def fire(self, event: str, state: TrainState) -> None:
        """Call every handler of ``event`` with ``state`` (for custom training loops)."""
        for handler in list(self._handlers[_check_event(event)]):
            result = handler(state)
            if inspect.isawaitable(result):
                await result

    # -- state -------------------------------------------------------------------------------
    async def _emit(self, event: str, logs: dict[str, Any] | None, **extra: Any) -> None:
        if not self._handlers[event]:
            return
        context = self.context
        if isinstance(context, FitContext):  # the fit's counters: right after a resume too
            counters = {
                "epoch": context.epoch,
                "step": context.step,
                "global_step": context.global_step,
                "num_epochs": context.epochs,
                "max_steps": context.epochs * context.steps_per_epoch,
            }
        else:
            counters = {}
        state = TrainState(
            event=event, program=self._program, logs=dict(logs or {}), **counters, **extra
        )
        await self.fire(event, state)

    # -- hooks ---------------------------------------------------------------------------------
    async def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        await self._emit("train_start", logs)

    async def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        await self._emit("train_end", logs)

    async def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        await self._emit("epoch_start", logs)

    async def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        await self._emit("epoch_end", logs)

    async def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        await self._emit("step_start", logs, batch=batch)

    async def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        await self._emit("step_end", logs, batch=batch)

    async def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        await self._emit("eval_start", logs)

    async def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        await self._emit("eval_end", logs)

    async def on_checkpoint_saved(self, path: str, logs: dict[str, Any] | None = None) -> None:
        await self._emit("checkpoint_saved", logs, checkpoint_path=str(path))

    async def on_train_error(self, error: BaseException) -> None:
        await self._emit("error", {}, error=error)

    # -- config --------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """``{"handlers": {event: [registry names]}}``.

        Raises:
            SerializationError: a handler is not registered with
                :func:`promptfit.saving.register_serializable`.
        """
        from promptfit.callbacks.serialization import serialize_function

        return {
            "handlers": {
                event: [serialize_function(h, f"Events handler for {event!r}") for h in handlers]
                for event, handlers in self._handlers.items()
                if handlers
            }
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Events:
        from promptfit.callbacks.serialization import deserialize_function

        unknown = sorted(set(config) - {"handlers"})
        if unknown:
            raise TypeError(f"Events got unknown argument(s) {unknown}; it takes 'handlers'.")
        events = cls()
        for event, names in (config.get("handlers") or {}).items():
            for name in names:
                events.on(event, deserialize_function(name, f"Events handler for {event!r}"))
        return events
