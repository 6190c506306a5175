"""Dispatch hooks to a list of callbacks, in order, awaiting async ones."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from promptfit.callbacks.callback import HOOKS, Callback
from promptfit.callbacks.defaults import default_callbacks
from promptfit.callbacks.history import History
from promptfit.callbacks.progbar_logger import ProgbarLogger

if TYPE_CHECKING:
    from promptfit.programs.program import Program
    from promptfit.training.context import RunContext

__all__ = ["CallbackList"]


class CallbackList:
    """Run the hooks of several callbacks in list order.

    Only callbacks that override a hook are called for it, so the per-batch cost of a long
    callback list is a loop over the few that care.

    As in Keras, the list also builds the callbacks every run gets, so the training loop does
    not import them: a :class:`~promptfit.callbacks.History` first (``add_history``; the
    user's own History is used instead when given), the user's callbacks, a
    :class:`~promptfit.callbacks.ProgbarLogger` (``add_progbar``), the callbacks registered in
    :mod:`promptfit.callbacks.defaults` (``add_defaults``; e.g. the Monitor of
    ``enable_observability``), and callbacks that snapshot the run
    (``snapshots_fit_state = True``, i.e. BackupAndRestore) last of all: their epoch/batch-end
    snapshot then includes every other callback's update for that step, and their
    ``on_train_begin`` restore overrides any reset done by the others' hooks.

    Args:
        callbacks: The user's callbacks, in order.
        add_history: Add a History unless ``callbacks`` holds one (``fit``).
        add_progbar: Add a ProgbarLogger (``fit``/``evaluate``/``predict`` with ``verbose``).
        verbose: The ProgbarLogger's ``verbose``.
        progbar_mode: The ProgbarLogger's ``mode`` (``"fit"``, ``"evaluate"``, ``"predict"``).
        add_defaults: Add the callbacks of the registered default-callback factories.
        program: Passed to every callback's ``set_program``.
        params: Passed to every callback's ``set_params``.
    """

    def __init__(
        self,
        callbacks: Iterable[Callback] | None = None,
        *,
        add_history: bool = False,
        add_progbar: bool = False,
        verbose: int | str = "auto",
        progbar_mode: str = "fit",
        add_defaults: bool = False,
        program: Program | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        user: list[Callback] = []
        for callback in callbacks or []:
            if not isinstance(callback, Callback):
                raise TypeError(
                    f"Callbacks must be pf.callbacks.Callback instances, got {type(callback)!r}."
                )
            user.append(callback)
        ordered = list(user)
        if add_history and not any(isinstance(c, History) for c in user):
            ordered.insert(0, History())
        if add_progbar:
            ordered.append(ProgbarLogger(verbose=verbose, mode=progbar_mode))
        if add_defaults:
            ordered.extend(default_callbacks(user))
        if add_history or add_defaults:
            ordered = [c for c in ordered if not getattr(c, "snapshots_fit_state", False)] + [
                c for c in ordered if getattr(c, "snapshots_fit_state", False)
            ]
        self.callbacks: list[Callback] = ordered
        self._handlers: dict[str, list[Any]] = {}
        self._rebuild()
        if program is not None:
            self.set_program(program)
        if params is not None:
            self.set_params(params)

    def _rebuild(self) -> None:
        self._handlers = {
            hook: [
                getattr(cb, hook)
                for cb in self.callbacks
                if getattr(type(cb), hook, None) is not getattr(Callback, hook)
            ]
            for hook in HOOKS
        }

    def append(self, callback: Callback) -> None:
        self.callbacks.append(callback)
        self._rebuild()

    def insert(self, index: int, callback: Callback) -> None:
        self.callbacks.insert(index, callback)
        self._rebuild()

    def set_program(self, program: Program) -> None:
        for callback in self.callbacks:
            callback.set_program(program)

    def set_params(self, params: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.set_params(params)

    def set_context(self, context: RunContext | None) -> None:
        """Give every callback ``context`` (``None``: no run)."""
        for callback in self.callbacks:
            callback.set_context(context)

    @contextlib.contextmanager
    def running(self, context: RunContext) -> Iterator[None]:
        """Give every callback the run's context for the ``with`` block, then take it back.

        ``fit`` wraps ``on_train_begin`` .. ``on_train_end`` in it, a standalone ``evaluate``
        ``on_test_begin`` .. ``on_test_end``. On exit, even after an error, each callback gets
        back the context it had before (``None`` outside any run): a callback that runs an
        ``evaluate`` of its own with itself in the list keeps its fit's context afterwards.
        """
        previous = [callback.context for callback in self.callbacks]
        self.set_context(context)
        try:
            yield
        finally:
            for callback, before in zip(self.callbacks, previous, strict=True):
                callback.set_context(before)

    @property
    def history(self) -> History | None:
        """The run's History (the first one in the list), or ``None``."""
        return next((c for c in self.callbacks if isinstance(c, History)), None)

    def __iter__(self) -> Iterator[Callback]:
        return iter(self.callbacks)

    def __len__(self) -> int:
        return len(self.callbacks)

    async def call(self, hook: str, *args: Any) -> None:
        """Call ``hook`` on every callback that implements it, awaiting coroutines."""
        for handler in self._handlers[hook]:
            result = handler(*args)
            if inspect.isawaitable(result):
                await result

    async def call_others(self, sender: Callback, hook: str, *args: Any) -> None:
        """Call ``hook`` on every callback of the list except ``sender``.

        For events a callback raises for the rest of the run, such as
        :class:`~promptfit.callbacks.ProgramCheckpoint` announcing each save with
        ``on_checkpoint_saved``: the others are reached through the same handler table as
        ``fit``'s own hooks (in order, only those that override the hook, coroutines awaited),
        and the sender never hears its own event, which would recurse.
        """
        for handler in self._handlers[hook]:
            if getattr(handler, "__self__", None) is sender:
                continue
            result = handler(*args)
            if inspect.isawaitable(result):
                await result

    # Keras-style named entry points, for readability at call sites.
    async def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        await self.call("on_train_begin", logs)

    async def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        await self.call("on_train_end", logs)

    async def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        await self.call("on_epoch_begin", epoch, logs)

    async def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        await self.call("on_epoch_end", epoch, logs)

    async def on_checkpoint_saved(self, path: str, logs: dict[str, Any] | None = None) -> None:
        await self.call("on_checkpoint_saved", path, logs)

    async def on_train_error(self, error: BaseException) -> None:
        await self.call("on_train_error", error)
