"""``LambdaCallback``: a callback made of plain functions, one per hook."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from promptfit.callbacks.callback import HOOKS, Callback
from promptfit.errors import ConfigurationError

__all__ = ["LambdaCallback"]

HookFunction = Callable[..., Any]


class LambdaCallback(Callback):
    """Run your own functions at any hook, without writing a Callback subclass.

    Each function receives the hook's arguments (``on_epoch_end(epoch, logs)``,
    ``on_train_batch_end(batch, logs)``, ``on_train_begin(logs)``,
    ``on_checkpoint_saved(path, logs)``, ``on_train_error(error)``...) and may be a plain
    function or ``async def`` (awaited by the training loop, so it can call LMs or do I/O
    without blocking the event loop).

    :class:`~promptfit.callbacks.CallbackList` only calls the hooks a callback's *class*
    overrides. Since the functions are given per instance, this class overrides every hook
    and forwards to the function given for it (a hook without one returns at once).

    Args:
        on_train_begin ... on_train_error: One optional function per hook of
            :data:`promptfit.callbacks.callback.HOOKS`, passed by keyword.

    Raises:
        TypeError: an argument is not a hook name (the message lists the valid ones).
        ConfigurationError: a value is not callable.

    Example:
        ```python
        import promptfit as pf

        rewards = []
        log_reward = pf.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: rewards.append(logs["reward"])
        )
        # await program.fit(x, y, epochs=3, callbacks=[log_reward])
        ```

    ``get_config()`` names each function by its registry name, so only functions decorated with
    :func:`promptfit.saving.register_serializable` can be saved in a config (as with
    :class:`~promptfit.FunctionModule`).
    """

    def __init__(
        self,
        *,
        on_train_begin: HookFunction | None = None,
        on_train_end: HookFunction | None = None,
        on_epoch_begin: HookFunction | None = None,
        on_epoch_end: HookFunction | None = None,
        on_train_batch_begin: HookFunction | None = None,
        on_train_batch_end: HookFunction | None = None,
        on_test_begin: HookFunction | None = None,
        on_test_end: HookFunction | None = None,
        on_test_batch_begin: HookFunction | None = None,
        on_test_batch_end: HookFunction | None = None,
        on_predict_begin: HookFunction | None = None,
        on_predict_end: HookFunction | None = None,
        on_predict_batch_begin: HookFunction | None = None,
        on_predict_batch_end: HookFunction | None = None,
        on_checkpoint_saved: HookFunction | None = None,
        on_train_error: HookFunction | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise TypeError(
                f"LambdaCallback got unknown hook(s) {sorted(unknown)}; valid hooks are: "
                f"{', '.join(HOOKS)}."
            )
        given = {
            "on_train_begin": on_train_begin,
            "on_train_end": on_train_end,
            "on_epoch_begin": on_epoch_begin,
            "on_epoch_end": on_epoch_end,
            "on_train_batch_begin": on_train_batch_begin,
            "on_train_batch_end": on_train_batch_end,
            "on_test_begin": on_test_begin,
            "on_test_end": on_test_end,
            "on_test_batch_begin": on_test_batch_begin,
            "on_test_batch_end": on_test_batch_end,
            "on_predict_begin": on_predict_begin,
            "on_predict_end": on_predict_end,
            "on_predict_batch_begin": on_predict_batch_begin,
            "on_predict_batch_end": on_predict_batch_end,
            "on_checkpoint_saved": on_checkpoint_saved,
            "on_train_error": on_train_error,
        }
        for hook, function in given.items():
            if function is not None and not callable(function):
                raise ConfigurationError(
                    f"LambdaCallback `{hook}` must be a function (sync or async), got {function!r}."
                )
        self.functions: dict[str, HookFunction] = {
            hook: function for hook, function in given.items() if function is not None
        }

    def _dispatch(self, hook: str, *args: Any) -> Any:
        function = self.functions.get(hook)
        return None if function is None else function(*args)

    # Every hook is overridden (see the class docstring); the result of an async function is
    # returned unawaited and awaited by CallbackList.
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> Any:
        return self._dispatch("on_train_begin", logs)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> Any:
        return self._dispatch("on_train_end", logs)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> Any:
        return self._dispatch("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> Any:
        return self._dispatch("on_epoch_end", epoch, logs)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> Any:
        return self._dispatch("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> Any:
        return self._dispatch("on_train_batch_end", batch, logs)

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> Any:
        return self._dispatch("on_test_begin", logs)

    def on_test_end(self, logs: dict[str, Any] | None = None) -> Any:
        return self._dispatch("on_test_end", logs)

    def on_test_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> Any:
        return self._dispatch("on_test_batch_begin", batch, logs)

    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> Any:
        return self._dispatch("on_test_batch_end", batch, logs)

    def on_predict_begin(self, logs: dict[str, Any] | None = None) -> Any:
        return self._dispatch("on_predict_begin", logs)

    def on_predict_end(self, logs: dict[str, Any] | None = None) -> Any:
        return self._dispatch("on_predict_end", logs)

    def on_predict_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> Any:
        return self._dispatch("on_predict_batch_begin", batch, logs)

    def on_predict_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> Any:
        return self._dispatch("on_predict_batch_end", batch, logs)

    def on_checkpoint_saved(self, path: str, logs: dict[str, Any] | None = None) -> Any:
        return self._dispatch("on_checkpoint_saved", path, logs)

    def on_train_error(self, error: BaseException) -> Any:
        return self._dispatch("on_train_error", error)

    # -- config ------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """``{hook: registry name}`` for every hook with a function.

        Raises:
            SerializationError: a function is not registered with
                :func:`promptfit.saving.register_serializable`.
        """
        from promptfit.callbacks.serialization import serialize_function

        return {
            hook: serialize_function(function, f"LambdaCallback.{hook}")
            for hook, function in self.functions.items()
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LambdaCallback:
        from promptfit.callbacks.serialization import deserialize_function

        unknown = sorted(set(config) - set(HOOKS))
        if unknown:
            raise TypeError(
                f"LambdaCallback got unknown hook(s) {unknown}; valid hooks are: "
                f"{', '.join(HOOKS)}."
            )
        return cls(
            **{
                hook: deserialize_function(name, f"LambdaCallback.{hook}")
                for hook, name in config.items()
            }
        )
