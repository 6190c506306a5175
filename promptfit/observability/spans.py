"""Trace spans around programs, modules and LM calls.

Library code opens spans through :func:`span`; with no tracing backend installed (the default)
it costs one global lookup and yields a shared no-op handle. :func:`promptfit.enable_observability`
installs the MLflow backend, after which every span becomes an MLflow trace span, nested by
the context variables that asyncio tasks inherit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

__all__ = [
    "NOOP_SPAN",
    "NoopSpan",
    "SpanBackend",
    "SpanHandle",
    "set_span_backend",
    "span",
    "span_backend",
]


class SpanHandle(Protocol):
    def set_outputs(self, outputs: Any) -> None: ...
    def set_attributes(self, attributes: dict[str, Any]) -> None: ...


class SpanBackend(Protocol):
    def start(
        self, name: str, kind: str, inputs: Any, attributes: dict[str, Any] | None
    ) -> contextlib.AbstractContextManager[SpanHandle]: ...


class NoopSpan:
    """The span handle of every span that records nothing: tracing off, a backend that failed
    to open a span, or a store MLflow cannot use. One class for the whole package, so "a span
    that records nothing" cannot drift between the tracer, the MLflow backend and LM calls."""

    __slots__ = ()

    def set_outputs(self, outputs: Any) -> None:
        return None

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        return None


#: The shared instance (stateless, so one is enough).
NOOP_SPAN = NoopSpan()
_NOOP = NOOP_SPAN
_backend: SpanBackend | None = None


def set_span_backend(backend: SpanBackend | None) -> None:
    """Install (or remove, with ``None``) the tracing backend."""
    global _backend
    _backend = backend


def span_backend() -> SpanBackend | None:
    return _backend


@contextlib.contextmanager
def span(
    name: str, kind: str, inputs: Any = None, attributes: dict[str, Any] | None = None
) -> Iterator[SpanHandle]:
    """Open a span; a no-op unless a backend is installed. Tracing errors never propagate."""
    backend = _backend
    if backend is None:
        yield _NOOP
        return
    try:
        manager = backend.start(name, kind, inputs, attributes)
        handle = manager.__enter__()
    except Exception:
        yield _NOOP
        return
    try:
        yield handle
    except BaseException as exc:
        with contextlib.suppress(Exception):
            manager.__exit__(type(exc), exc, exc.__traceback__)
        raise
    else:
        with contextlib.suppress(Exception):
            manager.__exit__(None, None, None)
