"""What a failed LM request means, and how the client waits and tries again.

Both transports' errors are judged by the same rules here: transient (rate limits, timeouts,
refused connections, 5xx, a reply that is not the requested JSON) is retried with bounded
exponential backoff that honours ``Retry-After``; fatal (bad key, unknown model, no
permission) stops the run at once with :class:`~promptfit.errors.LMConfigurationError`.
Split out of ``language_model.py`` (one concern per module); :class:`Retrying` is a mixin of
:class:`~promptfit.language_models.LanguageModel`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from promptfit.errors import LMConfigurationError
from promptfit.language_models import http_transport as _http
from promptfit.language_models._litellm import get_litellm, is_loaded
from promptfit.language_models.scope import add_usage

if TYPE_CHECKING:
    import random

    import pydantic

__all__ = ["InvalidOutputError", "Retrying", "StructuredOutputRefusedError"]


class InvalidOutputError(ValueError):
    """The reply was not valid JSON for the requested data model (retryable)."""


class StructuredOutputRefusedError(ValueError):
    """The server refused the pinned structured-output mode (never retried)."""


# The error classes of both transports, judged by the same rules. litellm's are added once it
# is imported (before that, no exception can be one of them).
_TRANSIENT: tuple[type[BaseException], ...] = (InvalidOutputError, *_http.TRANSIENT)
_FATAL: tuple[type[BaseException], ...] = _http.FATAL
_API_ERRORS: tuple[type[BaseException], ...] = (_http.TransportError,)
_with_litellm = False


def _error_classes() -> None:
    global _TRANSIENT, _FATAL, _API_ERRORS, _with_litellm
    if _with_litellm or not is_loaded():
        return
    litellm = get_litellm()
    _TRANSIENT = (
        *_TRANSIENT,
        litellm.RateLimitError,
        litellm.Timeout,
        litellm.APIConnectionError,
        litellm.InternalServerError,
        litellm.ServiceUnavailableError,
        litellm.BadGatewayError,
    )
    _FATAL = (
        *_FATAL,
        litellm.AuthenticationError,
        litellm.NotFoundError,
        litellm.PermissionDeniedError,
    )
    _API_ERRORS = (*_API_ERRORS, litellm.APIError)
    _with_litellm = True


def _is_transient(exc: BaseException) -> bool:
    _error_classes()
    if isinstance(exc, _TRANSIENT):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(exc, _API_ERRORS) and isinstance(status, int) and status >= 500


def _retry_after(exc: BaseException | None) -> float | None:
    """Seconds the provider asked us to wait, from the ``Retry-After`` header if any."""
    if exc is None:
        return None
    headers: Any = getattr(exc, "litellm_response_headers", None) or getattr(exc, "headers", None)
    response = getattr(exc, "response", None)
    if not headers and response is not None:
        headers = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        value = headers.get("retry-after") or headers.get("Retry-After")
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError, AttributeError):
        return None


class Retrying:
    """The retry policy of :class:`~promptfit.language_models.LanguageModel` (a mixin)."""

    model: str
    max_retries: int
    retry_min_wait: float
    retry_max_wait: float
    _jitter: random.Random

    if TYPE_CHECKING:

        async def _attempt_with_fallback(
            self, request: dict[str, Any], output_model: type[pydantic.BaseModel]
        ) -> tuple[pydantic.BaseModel, tuple[int, int, float]]: ...

    def _backoff(self, attempt_number: int, exc: BaseException | None) -> float:
        """Seconds to wait before retry ``attempt_number`` (1 = the first retry).

        Exponential from ``retry_min_wait`` with up to 50 % jitter on top, so the wait is
        never below ``retry_min_wait`` and scales with it; a provider's ``Retry-After`` wins
        within ``[retry_min_wait, retry_max_wait]``.
        """
        base = min(self.retry_max_wait, self.retry_min_wait * 2.0 ** max(0, attempt_number - 1))
        backoff = min(self.retry_max_wait, base * (1.0 + 0.5 * self._jitter.random()))
        asked = _retry_after(exc)
        if asked is None:
            return backoff
        return min(max(asked, self.retry_min_wait), self.retry_max_wait)

    def _wait(self, state: RetryCallState) -> float:
        """tenacity's wait hook: the backoff for the state's failed attempt."""
        outcome = state.outcome
        return self._backoff(state.attempt_number, outcome.exception() if outcome else None)

    async def _call_with_retries(
        self, request: dict[str, Any], output_model: type[pydantic.BaseModel]
    ) -> tuple[pydantic.BaseModel, tuple[int, int, float]]:
        """Attempts until one succeeds, a non-transient error, or the retries run out.

        The first attempt runs bare: nearly every call succeeds at once, and building retry
        machinery for each of thousands of in-flight calls measurably raised garbage-collector
        work (see docs/benchmarks.md). Only after a transient failure does tenacity take over
        the remaining attempts, with bounded exponential backoff that honours Retry-After.
        """
        try:
            return await self._attempt_with_fallback(request, output_model)
        except Exception as exc:
            if not _is_transient(exc) or self.max_retries == 0:
                raise
            first_error = exc
        add_usage(self, retries=1)
        await asyncio.sleep(self._backoff(1, first_error))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries),
            # tenacity counts from 1 again; the backoff continues from the bare attempt.
            wait=lambda state: self._backoff(
                state.attempt_number + 1,
                state.outcome.exception() if state.outcome is not None else None,
            ),
            retry=retry_if_exception(_is_transient),
            reraise=True,
            before_sleep=lambda _: add_usage(self, retries=1),
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt_with_fallback(request, output_model)
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_if_fatal(self, exc: Exception) -> None:
        """Raise for errors no retry can fix.

        Raises:
            LMConfigurationError: bad credentials, unknown model, no permission.
        """
        _error_classes()
        if isinstance(exc, _FATAL) or "missing credentials" in str(exc).lower():
            raise LMConfigurationError(
                f"{self.model} rejected the request ({type(exc).__name__}): "
                f"{str(exc).rstrip('.')}. "
                "Check the model name, `api_base` and `api_key` (for a server "
                "without auth, pass any placeholder key)."
            ) from exc
