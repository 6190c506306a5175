"""Default callbacks that other layers add to every ``fit``, without ``training/`` knowing them.

Why a registry: ``enable_observability()`` makes every later ``fit`` tracked by a
:class:`~promptfit.callbacks.Monitor`. If the training loop asked observability for that
Monitor, ``training/`` would import ``observability/``, which imports ``callbacks/``, which
``training/`` also imports. Instead, whoever wants a default callback registers a factory here
(``enable_observability`` registers one, ``disable_observability`` removes it), and
:class:`~promptfit.callbacks.CallbackList` asks the registered factories when it builds a fit's
callback list.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence

from promptfit.callbacks.callback import Callback

__all__ = [
    "DefaultCallbackFactory",
    "default_callbacks",
    "register_default_callback_factory",
    "registered_default_callback_factories",
    "unregister_default_callback_factory",
]

DefaultCallbackFactory = Callable[[Sequence[Callback]], Callback | None]
"""Given the user's callbacks, the callback to add (or ``None`` to add nothing, e.g. when the
user already passed one of its kind)."""

_lock = threading.Lock()
_factories: dict[str, DefaultCallbackFactory] = {}


def register_default_callback_factory(name: str, factory: DefaultCallbackFactory) -> None:
    """Add (or replace) the factory registered under ``name``.

    Example:
        ```python
        from promptfit.callbacks.defaults import (
            register_default_callback_factory,
            unregister_default_callback_factory,
        )

        register_default_callback_factory("nothing", lambda user_callbacks: None)
        unregister_default_callback_factory("nothing")
        ```
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"A default-callback factory needs a non-empty name, got {name!r}.")
    if not callable(factory):
        raise TypeError(f"A default-callback factory must be callable, got {factory!r}.")
    with _lock:
        _factories[name] = factory


def unregister_default_callback_factory(name: str) -> None:
    """Remove the factory registered under ``name`` (a no-op when there is none)."""
    with _lock:
        _factories.pop(name, None)


def registered_default_callback_factories() -> tuple[str, ...]:
    """The names of the registered factories, in the order their callbacks are added."""
    with _lock:
        return tuple(_factories)


def default_callbacks(user_callbacks: Sequence[Callback]) -> list[Callback]:
    """The callbacks every registered factory adds for a fit with ``user_callbacks``.

    A factory that raises or returns something that is not a callback adds nothing and costs
    one warning: a default callback (tracking, above all) must never stop a fit from starting.
    """
    with _lock:
        factories = list(_factories.items())
    added: list[Callback] = []
    for name, factory in factories:
        try:
            callback = factory(user_callbacks)
        except Exception as error:
            warnings.warn(
                f"promptfit: the default callback {name!r} could not be created "
                f"({type(error).__name__}: {error}); the fit runs without it.",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        if callback is None:
            continue
        if not isinstance(callback, Callback):
            warnings.warn(
                f"promptfit: the default-callback factory {name!r} returned "
                f"{type(callback).__name__}, not a Callback; the fit runs without it.",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        added.append(callback)
    return added
