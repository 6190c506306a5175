"""The registry of classes and functions a saved file may name.

Loading a file never imports a module named in it. A file names classes (callbacks, rewards,
modules...) and functions by registry name only; promptfit registers its own classes, and users
register theirs with :func:`register_serializable`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from promptfit.errors import SerializationError

__all__ = ["get_registered_object", "register_serializable", "registered_name"]

T = TypeVar("T")

_BY_NAME: dict[str, Any] = {}
_BY_ID: dict[int, str] = {}


def register_serializable(package: str = "custom", name: str | None = None) -> Callable[[T], T]:
    """Register a class or function under ``"<package>>NAME"`` so saved files can name it.

    Example:
        ```python
        import promptfit as pf

        @pf.saving.register_serializable()
        def normalise(x):
            return x
        ```
    """

    def decorator(obj: T) -> T:
        key = f"{package}>{name or getattr(obj, '__qualname__', getattr(obj, '__name__', ''))}"
        if not key.split(">", 1)[1]:
            raise SerializationError(f"Cannot infer a registry name for {obj!r}; pass `name=`.")
        _BY_NAME[key] = obj
        _BY_ID[id(obj)] = key
        return obj

    return decorator


def registered_name(obj: Any) -> str | None:
    """The registry name of ``obj``, or ``None`` when it is not registered."""
    return _BY_ID.get(id(obj))


def get_registered_object(name: str, expected: type | None = None) -> Any:
    """Look ``name`` up in the registry.

    Raises:
        SerializationError: the name is unknown (the error lists how to register it), or the
            object is not a subclass of ``expected``.
    """
    try:
        obj = _BY_NAME[name]
    except (KeyError, TypeError):
        raise SerializationError(
            f"Unknown class or function {name!r} in the saved file. Register it in this process "
            "with @pf.saving.register_serializable() before loading (saved files never import "
            "code by name)."
        ) from None
    if expected is not None and not (isinstance(obj, type) and issubclass(obj, expected)):
        raise SerializationError(f"{name!r} is not a {expected.__name__}.")
    return obj
