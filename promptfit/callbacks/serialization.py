"""Build callbacks from plain dicts and back, so a run's callbacks can live in JSON or YAML.

A description names a class, never a module: promptfit's own callbacks by class name (bare or
``"promptfit>Name"``) and user classes by the name they were registered under with
:func:`promptfit.saving.register_serializable`. Nothing is imported because a file said so.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

from promptfit.callbacks.callback import Callback
from promptfit.errors import ConfigurationError, SerializationError
from promptfit.saving.registry import get_registered_object, registered_name

__all__ = [
    "builtin_callbacks",
    "deserialize",
    "deserialize_function",
    "serialize",
    "serialize_function",
]

_PACKAGE = "promptfit.callbacks"
# Modules of the callbacks package that define callback classes. Some are written separately
# and may not exist yet in a given checkout, so each is imported only when a name is resolved.
_MODULES = (
    "history",
    "progbar_logger",
    "lambda_callback",
    "budget_stopping",
    "terminate_on_error",
    "prediction_logger",
    "events",
    "early_stopping",
    "program_checkpoint",
    "backup_and_restore",
    "csv_logger",
    "monitor",
)
_PREFIX = "promptfit>"
_KEYS = frozenset({"class_name", "config"})


def builtin_callbacks() -> dict[str, type[Callback]]:
    """``{class name: class}`` of promptfit's callbacks that this installation provides.

    Built on each call from the callbacks package (imports are cached by Python, so this is
    cheap); a module that does not exist is skipped, but a module that exists and fails to
    import raises, so a broken callback is never silently reported as "unknown".
    """
    table: dict[str, type[Callback]] = {}
    namespaces: list[Mapping[str, Any]] = []
    for module_name in _MODULES:
        full_name = f"{_PACKAGE}.{module_name}"
        try:
            module = importlib.import_module(full_name)
        except ModuleNotFoundError as error:
            if error.name != full_name:
                raise
            continue
        namespaces.append(
            {k: v for k, v in vars(module).items() if getattr(v, "__module__", "") == full_name}
        )
    namespaces.append(vars(importlib.import_module(_PACKAGE)))
    for namespace in namespaces:
        for name, obj in namespace.items():
            if (
                isinstance(obj, type)
                and issubclass(obj, Callback)
                and obj is not Callback
                and not name.startswith("_")
                and obj.__module__.startswith(_PACKAGE)
            ):
                table.setdefault(name, obj)
    return dict(sorted(table.items()))


def _resolve_class(class_name: str) -> type[Callback]:
    builtins = builtin_callbacks()
    bare = class_name.removeprefix(_PREFIX)
    if bare in builtins:
        return builtins[bare]
    candidates = [class_name] if ">" in class_name else [f"custom>{class_name}"]
    for candidate in candidates:
        try:
            obj = get_registered_object(candidate)
        except SerializationError:
            continue
        if not (isinstance(obj, type) and issubclass(obj, Callback)):
            raise SerializationError(
                f"{candidate!r} is registered but is not a pf.callbacks.Callback subclass."
            )
        return obj
    raise SerializationError(
        f"Unknown callback class {class_name!r}. promptfit's callbacks are: "
        f"{', '.join(builtins)}. For your own callback class, decorate it with "
        "@pf.saving.register_serializable() and name it as registered (e.g. 'custom>MyCallback')."
    )


def _check_arguments(cls: type[Callback], config: dict[str, Any]) -> None:
    """Name the unknown argument before the constructor gets a chance to fail obscurely."""
    if getattr(cls.from_config, "__func__", None) is not Callback.from_config.__func__:
        return  # a custom from_config decides what its config means
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [
        name
        for name, p in parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    unknown = [key for key in config if key not in accepted]
    if unknown:
        raise ConfigurationError(
            f"{cls.__name__} has no argument {unknown[0]!r} (config keys {unknown}). "
            f"Valid arguments: {', '.join(accepted) or 'none'}."
        )


def deserialize(config: Mapping[str, Any] | str) -> Callback:
    """Build a callback from ``{"class_name": ..., "config": {...}}``.

    Args:
        config: The description; ``class_name`` is a promptfit callback's class name
            (``"EarlyStopping"`` or ``"promptfit>EarlyStopping"``) or the registry name of a
            class registered with :func:`promptfit.saving.register_serializable`. A bare
            string is a class name with default arguments.

    Returns:
        The callback, built by the class's ``from_config``.

    Raises:
        SerializationError: the description is malformed or names an unknown class (the
            message lists the known ones).
        ConfigurationError: the config has an argument the class does not take, or a value
            the class rejects.

    Example:
        ```python
        import promptfit as pf

        budget = pf.callbacks.deserialize(
            {"class_name": "BudgetStopping", "config": {"max_calls": 500}}
        )
        ```
    """
    if isinstance(config, str):
        config = {"class_name": config, "config": {}}
    if not isinstance(config, Mapping):
        raise SerializationError(
            f"A callback description must be a dict with 'class_name' and 'config', got "
            f"{type(config).__name__}."
        )
    extra = sorted(set(config) - _KEYS)
    if extra or "class_name" not in config:
        raise SerializationError(
            "A callback description is {'class_name': ..., 'config': {...}}; got keys "
            f"{sorted(config)}."
        )
    class_name = config["class_name"]
    arguments = config.get("config") or {}
    if not isinstance(class_name, str) or not class_name:
        raise SerializationError(f"'class_name' must be a non-empty string, got {class_name!r}.")
    if not isinstance(arguments, Mapping):
        raise SerializationError(
            f"'config' of {class_name} must be a dict of constructor arguments, got "
            f"{type(arguments).__name__}."
        )
    cls = _resolve_class(class_name)
    arguments = dict(arguments)
    _check_arguments(cls, arguments)
    try:
        callback = cls.from_config(arguments)
    except TypeError as error:
        raise ConfigurationError(f"Invalid config for {cls.__name__}: {error}") from error
    if not isinstance(callback, Callback):
        raise SerializationError(
            f"{cls.__name__}.from_config returned {type(callback).__name__}, not a Callback."
        )
    return callback


def serialize(callback: Callback) -> dict[str, Any]:
    """Describe ``callback`` as ``{"class_name", "config"}`` (plain JSON), for :func:`deserialize`.

    Raises:
        SerializationError: the class is neither one of promptfit's callbacks nor registered,
            or its ``get_config()`` is not plain JSON.

    Example:
        ```python
        import promptfit as pf

        pf.callbacks.serialize(pf.callbacks.BudgetStopping(max_calls=500))
        # {"class_name": "BudgetStopping", "config": {"max_cost": None, ...}}
        ```
    """
    if not isinstance(callback, Callback):
        raise SerializationError(
            f"serialize() takes a pf.callbacks.Callback, got {type(callback).__name__}."
        )
    cls = type(callback)
    if builtin_callbacks().get(cls.__name__) is cls:
        class_name = cls.__name__
    else:
        name = registered_name(cls)
        if name is None:
            raise SerializationError(
                f"{cls.__name__} is not one of promptfit's callbacks and is not registered; "
                "decorate the class with @pf.saving.register_serializable() so it can be "
                "rebuilt by name."
            )
        class_name = name
    config = callback.get_config()
    try:
        json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise SerializationError(
            f"{cls.__name__}.get_config() must return plain JSON (str, numbers, bools, None, "
            f"lists, dicts): {error}."
        ) from None
    return {"class_name": class_name, "config": config}


def serialize_function(function: Callable[..., Any], where: str) -> str:
    """The registry name of ``function``, for configs that refer to user code.

    Raises:
        SerializationError: the function is not registered (``where`` says which argument).
    """
    name = registered_name(function)
    if name is None:
        label = getattr(function, "__qualname__", repr(function))
        raise SerializationError(
            f"{where}: function {label!r} is not registered, so the config cannot name it. "
            "Decorate it with @pf.saving.register_serializable() (a config never imports code "
            "by name)."
        )
    return name


def deserialize_function(name: Any, where: str) -> Callable[..., Any]:
    """The registered function called ``name`` (see :func:`serialize_function`)."""
    if not isinstance(name, str):
        raise SerializationError(
            f"{where}: expected the registry name of a function, got {name!r}."
        )
    function = get_registered_object(name)
    if not callable(function):
        raise SerializationError(f"{where}: {name!r} is registered but is not callable.")
    return function
