"""Dispatch hooks to a list of callbacks, in order, awaiting async ones."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from promptfit.callbacks.callback import HOOKS, Callback

if TYPE_CHECKING:
    from promptfit.programs.program import Program

__all__ = ["CallbackList"]


class CallbackList:
    """Run the hooks of several callbacks in list order.

    Only callbacks that override a hook are called for it, so the per-batch cost of a long
    callback list is a loop over the few that care.
    """

    def __init__(
        self,
        callbacks: Iterable[Callback] | None = None,
        *,
        program: Program | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        self.callbacks: list[Callback] = []
        for callback in callbacks or []:
            if not isinstance(callback, Callback):
                raise TypeError(
                    f"Callbacks must be pf.callbacks.Callback instances, got {type(callback)!r}."
                )
            self.callbacks.append(callback)
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
