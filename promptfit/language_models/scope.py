"""Run scopes: usage and call outcomes attributed to one ``fit``/``evaluate``, context-locally.

Why: one :class:`~promptfit.LanguageModel` is often shared, by several programs or by two fits
running at once under ``asyncio.gather``. Its own counters (``lm.usage``) are global totals, so
a fit that measured its spend as "LM totals now minus LM totals at start" also counted the
other fit's calls, and a fit restored from a backup overwrote the shared totals. A
:class:`RunScope` is opened by each ``fit``/``evaluate`` in a :mod:`contextvars` variable: the
tasks that the run starts inherit it and the other run's tasks do not, so every LM call adds
its usage to the scopes of the run that made it (and to the LM's global totals).

A scope also watches the run's first generations so that a run never fails silently: when the
first :data:`FAIL_FAST_AFTER` generations all fail with the same kind of error (exception class
and HTTP status, whatever the text), or every generation of a run fails, it raises
:class:`~promptfit.errors.LMCallsFailingError` (or warns once, with ``fail_fast=False``)
quoting the server.
"""

from __future__ import annotations

import contextvars
import functools
import warnings
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ParamSpec, TypeVar

from promptfit.errors import LMCallsFailingError, LMConfigurationError
from promptfit.language_models.redact import redact_url
from promptfit.language_models.structured import server_message
from promptfit.language_models.usage import Usage

__all__ = [
    "FAIL_FAST_AFTER",
    "RunScope",
    "add_usage",
    "current_scope",
    "record_generation",
    "run_scope",
    "usage_totals",
]

# How many failed first generations, all with the same kind of error, end a run early.
FAIL_FAST_AFTER = 5

_SCOPE: contextvars.ContextVar[RunScope | None] = contextvars.ContextVar(
    "promptfit_run_scope", default=None
)


class RunScope:
    """Usage per language model, and the outcome of generations, for one run."""

    def __init__(self, fail_fast: bool = True, parent: RunScope | None = None) -> None:
        self.fail_fast = fail_fast
        self.parent = parent
        self._usages: weakref.WeakKeyDictionary[Any, Usage] = weakref.WeakKeyDictionary()
        self.succeeded = 0
        self.failed = 0
        # The first failures while nothing has succeeded: (signature, lm, error).
        self._first: list[tuple[str, Any, BaseException]] = []
        self._reported = False
        # The same, per language model: one LM of several can fail every call while the
        # others answer (a second generator, a judge, an optimizer's proposer).
        self._by_lm: weakref.WeakKeyDictionary[Any, _LMOutcomes] = weakref.WeakKeyDictionary()

    # -- usage ---------------------------------------------------------------------------
    def usage_of(self, lm: Any) -> Usage:
        """This run's usage of ``lm`` (created at zero on first use)."""
        usage = self._usages.get(lm)
        if usage is None:
            usage = self._usages[lm] = Usage()
        return usage

    def restore_usage(self, lm: Any, state: dict[str, Any]) -> None:
        """Set this run's usage of ``lm`` to a saved state (a resumed backup).

        The LM's global totals move by the same difference, so they keep including this run,
        and no other run's counters are touched.
        """
        usage = self.usage_of(lm)
        before = usage.state_dict()
        usage.load_state_dict(state)
        after = usage.state_dict()
        delta = {key: after[key] - before[key] for key in after}
        lm.usage.add(**delta)

    # -- outcomes ------------------------------------------------------------------------
    def record(self, lm: Any, error: BaseException | None) -> None:
        """Count one generation; raise or warn when the run is failing from its start."""
        scope: RunScope | None = self
        while scope is not None:
            scope._record(lm, error)
            scope = scope.parent

    def _record(self, lm: Any, error: BaseException | None) -> None:
        outcomes = self._by_lm.get(lm)
        if outcomes is None:
            outcomes = self._by_lm[lm] = _LMOutcomes()
        if error is None:
            self.succeeded += 1
            self._first.clear()
            outcomes.succeeded += 1
            return
        self.failed += 1
        outcomes.failed += 1
        if not outcomes.succeeded and len(outcomes.first) < FAIL_FAST_AFTER:
            outcomes.first.append((_signature(error), error))
        if self.succeeded or self._reported or len(self._first) >= FAIL_FAST_AFTER:
            if (
                self.succeeded
                and len(outcomes.first) == FAIL_FAST_AFTER
                and len({s for s, _ in outcomes.first}) == 1
            ):
                self._warn_about(
                    lm,
                    f"The first {FAIL_FAST_AFTER} LM calls of this run to {_name(lm)} all "
                    "failed with the same kind of error, while its other LM calls succeed",
                )
            return
        self._first.append((_signature(error), lm, error))
        if len(self._first) == FAIL_FAST_AFTER and len({s for s, _, _ in self._first}) == 1:
            self._report(
                f"The first {FAIL_FAST_AFTER} LM calls of this run all failed with the same kind "
                "of error"
            )

    def check_end(self) -> None:
        """At the end of a run: every generation failed is an error (or one warning); every
        call to one of its LMs failed, while others answered, is one warning."""
        if self.failed and not self.succeeded and not self._reported and self._first:
            self._report(f"All {self.failed} LM calls of this run failed")
        if not self.succeeded:
            return
        for lm, outcomes in list(self._by_lm.items()):
            if outcomes.failed and not outcomes.succeeded:
                self._warn_about(
                    lm, f"All {outcomes.failed} LM calls of this run to {_name(lm)} failed"
                )

    def _warn_about(self, lm: Any, what: str) -> None:
        """Warn once per run that every call to ``lm`` fails, quoting its server.

        A warning, not an error, whatever ``fail_fast``: the run's other LMs answer, and an
        auxiliary LM (an optimizer's proposer, a judge) that fails may leave a useful run.
        """
        if self._reported and self._first and self._first[0][1] is lm:
            return  # the run's own report already quoted this LM's failure
        scope: RunScope | None = self
        while scope is not None:  # the enclosing runs count the same calls: one warning
            outcomes = scope._by_lm.get(lm)
            if outcomes is not None:
                if outcomes.reported:
                    return
                outcomes.reported = True
            scope = scope.parent
        outcomes = self._by_lm[lm]
        error = outcomes.first[0][1]
        warnings.warn(
            f"{what}. The first error{_where(lm)}: {type(error).__name__}: "
            f"{server_message(error)} -- {_hint(error, lm)}",
            RuntimeWarning,
            stacklevel=3,
        )

    def _report(self, what: str) -> None:
        self._reported = True
        _, lm, error = self._first[0]
        message = (
            f"{what}. The first error, from {getattr(lm, 'model', lm)!r}{_where(lm)}: "
            f"{type(error).__name__}: {server_message(error)} -- {_hint(error, lm)}"
        )
        if self.fail_fast:
            raise LMCallsFailingError(f"{message} (Pass fail_fast=False to run on anyway.)")
        warnings.warn(message, RuntimeWarning, stacklevel=2)


class _LMOutcomes:
    """How one language model's generations went in one run."""

    __slots__ = ("failed", "first", "reported", "succeeded")

    def __init__(self) -> None:
        self.succeeded = 0
        self.failed = 0
        self.first: list[tuple[str, BaseException]] = []  # its first failures, none before
        self.reported = False


def _name(lm: Any) -> str:
    return repr(getattr(lm, "model", lm))


def _signature(error: BaseException) -> str:
    """An error's kind: its class and HTTP status, not its text.

    Why not the text: the text of one systemic failure differs from call to call. A server
    that answers every request with prose instead of JSON fails each call with an
    :class:`InvalidOutputError` quoting a different reply; a server that refuses every
    request may echo the request, a request id or a token count. Comparing texts let such a
    run spend all its data before the end-of-run check spoke up.
    """
    return f"{type(error).__name__}:{getattr(error, 'status_code', None)}"


def _where(lm: Any) -> str:
    api_base = getattr(lm, "api_base", None)
    return f" at {redact_url(api_base)}" if api_base else ""


def _hint(error: BaseException, lm: Any = None) -> str:
    """What to try, from the kind of failure (and the structured-output mode ``lm`` sends)."""
    name = type(error).__name__
    status = getattr(error, "status_code", None)
    if name == "InvalidOutputError":
        return (
            "the model answers, but never with JSON that fits the output data model: try a "
            "constrained mode (structured_output='auto' or 'json_object_schema'), a larger "
            "model, or clearer instructions and field descriptions."
        )
    if name == "StructuredOutputRefusedError":
        return (
            "the server does not accept the pinned structured_output mode: use "
            "structured_output='auto' to negotiate one, or pin 'json_text'."
        )
    unreachable = "connection error" in str(error).lower() or "connect" in name.lower()
    if unreachable or name == "ServiceUnavailableError" or status in (502, 503):
        return "is the server running and reachable? Check `api_base` and the server's logs."
    if name == "Timeout" or status == 504:
        return "the server is too slow: raise `timeout` or lower `max_concurrency`."
    if name == "RateLimitError" or status == 429:
        return "the server is rate-limiting: lower `max_concurrency` or raise `retry_max_wait`."
    if isinstance(status, int) and status >= 500:
        return (
            "the server fails on every request: check its logs; if it cannot handle the "
            "requested response format, pin structured_output='json_text'."
        )
    hint = (
        "the server refuses every request: check the model name, `api_base` and the extra "
        "litellm arguments."
    )
    mode = getattr(lm, "output_mode", "json_text")
    if mode != "json_text":
        # A server may reject the response_format without naming it (then no negotiation
        # could recognise the refusal): say which one was sent, and how to send less.
        hint += (
            f" If it is the response format (requests carry structured_output={mode!r}), pin "
            "structured_output='json_object' or 'json_text'."
        )
    return hint


# -- the context variable ----------------------------------------------------------------
def current_scope() -> RunScope | None:
    """The run scope of the calling context (``None`` outside ``fit``/``evaluate``)."""
    return _SCOPE.get()


def add_usage(lm: Any, **deltas: float) -> None:
    """Count usage on ``lm``'s global totals and on every run scope of the calling context."""
    lm.usage.add(**deltas)
    scope = _SCOPE.get()
    while scope is not None:
        scope.usage_of(lm).add(**deltas)
        scope = scope.parent


def record_generation(lm: Any, error: BaseException | None) -> None:
    """Count one generation's outcome in the calling context's run (no-op outside one)."""
    scope = _SCOPE.get()
    if scope is not None:
        scope.record(lm, error)


def usage_totals(lms: Iterable[Any]) -> Usage:
    """The usage of ``lms`` in the current run, or their global totals outside a run."""
    scope = _SCOPE.get()
    if scope is None:
        return Usage.total([lm.usage for lm in lms])
    return Usage.total([scope.usage_of(lm) for lm in lms])


P = ParamSpec("P")
R = TypeVar("R")


def run_scope(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Run an async ``fit``/``evaluate`` in its own :class:`RunScope`.

    Reads the method's ``fail_fast`` keyword (default ``True``). An
    :class:`~promptfit.errors.LMConfigurationError` raised by a call inside the run's task
    group reaches the caller as itself, not wrapped in an ``ExceptionGroup``.
    """

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        scope = RunScope(fail_fast=bool(kwargs.get("fail_fast", True)), parent=_SCOPE.get())
        token = _SCOPE.set(scope)
        try:
            result = await fn(*args, **kwargs)
            scope.check_end()
            return result
        except BaseExceptionGroup as group:
            lone = _lone_lm_error(group)
            if lone is None:
                raise
            # Keep the error's own cause (the provider's exception); the group stays as context.
            raise lone from lone.__cause__
        finally:
            _SCOPE.reset(token)

    return wrapper


def _lone_lm_error(group: BaseExceptionGroup[Any]) -> LMConfigurationError | None:
    """The first error of a group made only of LM configuration errors."""
    matched, rest = group.split(LMConfigurationError)
    if matched is None or rest is not None:
        return None
    errors: list[BaseException] = [matched]
    while errors and isinstance(errors[0], BaseExceptionGroup):
        errors = list(errors[0].exceptions) + errors[1:]
    first = errors[0] if errors else None
    return first if isinstance(first, LMConfigurationError) else None
