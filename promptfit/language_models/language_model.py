"""The language model client: every LM call in promptfit goes through here.

One :class:`LanguageModel` wraps one litellm model string. Its requests go through litellm, or, for
an OpenAI-compatible server (``openai/<model>`` with ``api_base``), over the lean HTTP transport of
:mod:`.http_transport`; everything else here is shared by both paths. It bounds concurrency, caches
replies by request, retries transient failures with bounded exponential backoff that honours
``Retry-After``, validates replies against the requested data model, and counts usage. A call that
still fails becomes a recorded failure (``None``), never a crash, except for errors that no retry
can fix (bad key, unknown model), which stop the run at once with
:class:`~promptfit.errors.LMConfigurationError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import anyio
import pydantic
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from promptfit.data.data_model import json_schema_of
from promptfit.errors import ConfigurationError, LMConfigurationError
from promptfit.language_models import http_transport as _http
from promptfit.language_models._litellm import get_litellm, is_loaded
from promptfit.language_models.cache import (
    ResponseCache,
    call_origin,
    default_cache_path,
    request_key,
)
from promptfit.language_models.request import parse_json_reply
from promptfit.language_models.scope import add_usage, record_generation
from promptfit.language_models.structured import (
    MODES,
    OutputMode,
    StructuredOutput,
    is_format_refusal,
    lower_mode,
    mode_of,
    next_mode,
    response_format_for,
    server_message,
)
from promptfit.language_models.usage import Usage
from promptfit.observability.spans import NOOP_SPAN, span, span_backend

__all__ = ["Generation", "LanguageModel"]

logger = logging.getLogger("promptfit")

_STRUCTURED_OUTPUTS: tuple[str, ...] = get_args(StructuredOutput)

# The mode each endpoint (model string, api_base) was last found to accept, so a second
# client of the same server starts there instead of negotiating again.
_ENDPOINT_MODES: dict[tuple[str, Any], OutputMode] = {}
# Endpoints whose working mode was logged at INFO already (once per process).
_LOGGED_MODES: set[tuple[str, Any, OutputMode]] = set()


class InvalidOutputError(ValueError):
    """The reply was not valid JSON for the requested data model (retryable)."""


class StructuredOutputRefusedError(ValueError):
    """The server refused the pinned structured-output mode (never retried)."""


@dataclass(frozen=True, slots=True)
class Generation:
    """The outcome of one generation: a validated value, or the error that prevented it."""

    value: pydantic.BaseModel | None
    error: str | None = None
    cached: bool = False


Transport = Literal["auto", "litellm", "http"]
_TRANSPORTS: tuple[str, ...] = get_args(Transport)

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


# With tracing off (the default) a call opens this shared, reusable context instead of a
# span: no generator, no input or attribute dicts per call.
_NO_SPAN = contextlib.nullcontext(NOOP_SPAN)


def _new_semaphore(value: int) -> anyio.Semaphore:
    # ``fast_acquire`` (anyio >= 4.5) skips the extra trip through the event loop that an
    # uncontended acquire otherwise makes; the HTTP request right after yields anyway.
    try:
        return anyio.Semaphore(value, fast_acquire=True)
    except TypeError:  # pragma: no cover - older anyio
        return anyio.Semaphore(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_arguments(
    *,
    max_concurrency: Any,
    temperature: Any,
    max_tokens: Any,
    timeout: Any,
    max_retries: Any,
    retry_min_wait: Any,
    retry_max_wait: Any,
    cache: Any,
    structured_output: Any,
    structured_output_mode: Any,
) -> None:
    """Typed errors, each naming the fix, for the client's own settings."""

    def positive_int(name: str, value: Any, minimum: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            hint = f" (pass {name}={int(value)})" if _is_integer_text(value) else ""
            raise ConfigurationError(
                f"`{name}` must be an integer >= {minimum}, got {value!r}{hint}."
            )

    positive_int("max_concurrency", max_concurrency, 1)
    positive_int("max_retries", max_retries, 0)
    if max_tokens is not None:
        positive_int("max_tokens", max_tokens, 1)
    if not _is_number(temperature) or temperature < 0:
        raise ConfigurationError(f"`temperature` must be a number >= 0, got {temperature!r}.")
    if not _is_number(timeout) or timeout <= 0:
        raise ConfigurationError(
            f"`timeout` must be a number of seconds > 0, got {timeout!r} (e.g. timeout=60)."
        )
    for name, value in (("retry_min_wait", retry_min_wait), ("retry_max_wait", retry_max_wait)):
        if not _is_number(value) or value < 0:
            raise ConfigurationError(f"`{name}` must be a number of seconds >= 0, got {value!r}.")
    if retry_min_wait > retry_max_wait:
        raise ConfigurationError(
            f"`retry_min_wait` ({retry_min_wait}) must not exceed `retry_max_wait` "
            f"({retry_max_wait})."
        )
    if not isinstance(cache, bool | str | os.PathLike):
        raise ConfigurationError(
            f"`cache` must be True, False or a file path for a persistent cache, got {cache!r}."
        )
    if structured_output not in _STRUCTURED_OUTPUTS:
        raise ConfigurationError(
            f"`structured_output` must be one of {', '.join(map(repr, _STRUCTURED_OUTPUTS))}, "
            f"got {structured_output!r}."
        )
    if structured_output_mode is not None and structured_output_mode not in MODES:
        raise ConfigurationError(
            f"`structured_output_mode` must be None or one of {', '.join(map(repr, MODES))}, "
            f"got {structured_output_mode!r}."
        )


def _is_integer_text(value: Any) -> bool:
    return isinstance(value, str) and value.strip().isdigit()


def _check_route(model: str, api_base: str | None, litellm_kwargs: dict[str, Any]) -> None:
    """Refuse at construction a model string that litellm cannot send anywhere.

    Raises:
        LMConfigurationError: litellm finds no provider for ``model`` (otherwise every call
            of the run would fail the same way).
    """
    provider = litellm_kwargs.get("custom_llm_provider")
    try:
        get_litellm().get_llm_provider(model=model, custom_llm_provider=provider, api_base=api_base)
    except Exception as exc:
        raise LMConfigurationError(
            f"litellm cannot route model={model!r} "
            f"({server_message(exc).splitlines()[0].rstrip('. ')}). "
            "Name the provider in the model string, e.g. 'openai/gpt-4o-mini' or "
            "'ollama/llama3'; for your own OpenAI-compatible server use "
            "model='openai/<served name>' with api_base='http://host:port/v1'; for the "
            "embedded model use 'local/gemma-3-270m'."
        ) from exc


@dataclass(slots=True)
class _Replica:
    """One replica of a model: its URL, its lean-path client, and its requests in flight."""

    base: str
    http: _http.HTTPTransport | None
    in_flight: int = 0


def _replica_bases(api_base: Any) -> list[str]:
    """``api_base`` as a list of URLs (empty for none).

    Raises:
        ConfigurationError: not a URL string, nor a non-empty list of distinct URL strings.
    """
    if api_base is None:
        return []
    if isinstance(api_base, str):
        return [api_base]
    if isinstance(api_base, list | tuple) and api_base:
        bases = list(api_base)
        if all(isinstance(b, str) and b for b in bases) and len(set(bases)) == len(bases):
            return bases
    raise ConfigurationError(
        f"`api_base` must be a URL string or a non-empty list of distinct URL strings (one "
        f"per replica), got {api_base!r}."
    )


class LanguageModel:
    """A language model reached through litellm.

    Args:
        model: Any litellm model string (``"openai/gpt-4o-mini"``, ``"ollama/llama3"``...), or
            ``"local/gemma-3-270m"`` for the embedded offline model (``promptfit[local]``).
            A string litellm cannot route raises :class:`~promptfit.errors.LMConfigurationError`.
        api_base: Endpoint URL for OpenAI-compatible servers, or a list of the URLs of several
            replicas of one model (vLLM/SGLang instances...). With a list, each request waits
            for a free slot on any replica (``max_concurrency`` bounds each one) and goes to
            the replica with the fewest requests in flight, and a transient error (5xx, 429,
            timeout, refused connection) is sent at once to another replica before the usual
            retries. Usage counts every request sent, and the tokens of the one reply used.
        api_key: The key. Used for requests only: never saved, cached, logged or tracked.
        max_concurrency: Most requests in flight at once for this model (per replica when
            ``api_base`` is a list).
        temperature: Sampling temperature (0 makes runs reproducible on deterministic servers).
        max_tokens: Cap on completion tokens, or ``None`` for the provider's default.
        timeout: Seconds before one request is abandoned (and retried).
        max_retries: Retries after the first attempt for transient errors and invalid JSON.
        retry_min_wait: First backoff in seconds; it doubles per retry, with up to 50 % of
            jitter added (never less than ``retry_min_wait``).
        retry_max_wait: Longest single wait, also the cap on a provider's ``Retry-After``.
        cache: ``True`` (default) caches replies in memory and in promptfit's shared on-disk
            cache (``~/.cache/promptfit/responses.sqlite`` on Linux, bounded in size; set
            ``PROMPTFIT_CACHE_DIR`` to move it), so a repeated or resumed fit pays for no
            call twice; a path uses that SQLite file instead; ``False`` disables caching.
        structured_output: How replies are made JSON. ``"auto"`` (default) negotiates: it tries
            ``"json_schema"``, then ``"json_object_schema"`` (``json_object`` with the schema,
            as llama.cpp and vLLM take it), then ``"json_object"``, then ``"json_text"`` (the
            schema in the prompt only), stepping down when the server answers that it does not
            support a format, and remembers the mode that works. Any of those four names pins
            one mode. See "Using your own server" in the docs.
        structured_output_mode: Where ``"auto"`` starts: the mode an earlier negotiation
            settled on. ``get_config()`` saves it, so a loaded program does not negotiate again.
        name: A name for logs and saved files (defaults to ``model``).
        transport: How requests travel. ``"litellm"``: through ``litellm.acompletion``, for
            every provider. ``"http"``: straight to an OpenAI-compatible server over one
            pooled aiohttp session (:mod:`.http_transport`), several times less CPU per call;
            it needs ``model="openai/<served name>"`` and ``api_base``, and extra arguments
            limited to plain body parameters (``top_p``, ``stop``, ``seed``...).
            ``"auto"`` (default) picks ``"http"`` exactly when that applies *and* litellm's
            price table does not know the model (a self-hosted model: cost 0 on both paths),
            so nothing observable changes; otherwise litellm. Both paths share retries,
            ``Retry-After``, the error classes (same names and statuses), structured-output
            negotiation, the cache, spans, usage and timeouts.
        **litellm_kwargs: Extra keyword arguments passed to ``litellm.acompletion``.

    Example:
        ```python
        import promptfit as pf

        lm = pf.LanguageModel(model="openai/my-model", api_base="http://127.0.0.1:8000/v1",
                              api_key="sk-...", max_concurrency=64)
        ```
    """

    def __init__(
        self,
        model: str,
        *,
        api_base: str | list[str] | None = None,
        api_key: str | None = None,
        max_concurrency: int = 16,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        retry_min_wait: float = 0.5,
        retry_max_wait: float = 30.0,
        cache: bool | str | Path = True,
        structured_output: StructuredOutput = "auto",
        structured_output_mode: OutputMode | None = None,
        name: str | None = None,
        transport: Transport = "auto",
        **litellm_kwargs: Any,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise ConfigurationError(
                f"`model` must be a litellm model string like 'openai/gpt-4o', got {model!r}."
            )
        bases = _replica_bases(api_base)
        _check_arguments(
            max_concurrency=max_concurrency,
            temperature=temperature,
            max_tokens=max_tokens,
            timeout=timeout,
            max_retries=max_retries,
            retry_min_wait=retry_min_wait,
            retry_max_wait=retry_max_wait,
            cache=cache,
            structured_output=structured_output,
            structured_output_mode=structured_output_mode,
        )
        if "api_key" in litellm_kwargs:
            raise ConfigurationError("Pass `api_key` as its own argument.")
        if transport not in _TRANSPORTS:
            raise ConfigurationError(
                f"`transport` must be one of {', '.join(map(repr, _TRANSPORTS))}, "
                f"got {transport!r}."
            )
        lean_refusal = _http.lean_path_possible(model, api_base, litellm_kwargs)
        if transport == "http" and lean_refusal is not None:
            raise ConfigurationError(
                f"transport='http' cannot serve model={model!r}: {lean_refusal}. Use "
                "model='openai/<served name>' with api_base='http://host:port/v1', or "
                "transport='litellm'."
            )
        self.transport_setting: Transport = transport
        self.transport: Literal["litellm", "http"] = (
            "http"
            if transport == "http"
            or (transport == "auto" and lean_refusal is None and not _http.has_price(model))
            else "litellm"
        )
        self._http: _http.HTTPTransport | None = None
        if self.transport == "http":
            self._http = _http.HTTPTransport(bases[0], api_key, float(timeout))
        elif model.startswith("local/"):
            from promptfit.language_models.local import register_local_provider

            register_local_provider(model)
        else:
            _check_route(model, bases[0] if bases else None, litellm_kwargs)
        self.model = model
        self.api_base = list(api_base) if isinstance(api_base, list | tuple) else api_base
        # Where requests go, as a hashable key (the negotiated-mode memory is per endpoint).
        self._base_key: str | tuple[str, ...] | None = (
            tuple(bases) if len(bases) > 1 else (bases[0] if bases else None)
        )
        self._replicas: list[_Replica] | None = None
        if len(bases) > 1:
            self._replicas = [
                _Replica(
                    base,
                    _http.HTTPTransport(base, api_key, float(timeout))
                    if self.transport == "http"
                    else None,
                )
                for base in bases
            ]
        self._api_key = api_key
        self.max_concurrency = int(max_concurrency)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.max_retries = int(max_retries)
        self.retry_min_wait = retry_min_wait
        self.retry_max_wait = retry_max_wait
        self.structured_output: StructuredOutput = structured_output
        self.name = name or model
        self.litellm_kwargs = litellm_kwargs
        self._cache_setting = cache if isinstance(cache, bool) else str(cache)
        self.cache: ResponseCache | None
        if cache is False:
            self.cache = None
        elif cache is True:
            self.cache = ResponseCache(path=default_cache_path())
        else:
            self.cache = ResponseCache(path=cache)
        self.usage = Usage()
        endpoint = (model, self._base_key)
        # The mode requests are built in. Pinned: fixed. Auto: where negotiation stands.
        self._mode: OutputMode
        if structured_output != "auto":
            self._mode = structured_output
        else:
            self._mode = structured_output_mode or _ENDPOINT_MODES.get(endpoint, MODES[0])
        # Whether the mode is known to work (a reply came back in it, now or in an earlier
        # negotiation). Until then an auto client sends one request at a time, so that a server
        # refusing the format costs one refused request per mode, not one per in-flight call.
        self._settled = structured_output != "auto" or self._mode == "json_text"
        self._settled = self._settled or structured_output_mode is not None
        self._settled = self._settled or endpoint in _ENDPOINT_MODES
        self._negotiated = False  # stepped down from a refused mode in this process
        self._probe_locks: weakref.WeakKeyDictionary[Any, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._jitter = random.Random()
        self._limiters: weakref.WeakKeyDictionary[Any, anyio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self._replica_limiters: weakref.WeakKeyDictionary[
            Any, tuple[anyio.Semaphore, list[anyio.Semaphore]]
        ] = weakref.WeakKeyDictionary()
        self._rotation = 0  # where the tie-break among equally loaded replicas starts
        # The last (loop, limiter) pair, so a call does not build a weak reference to look
        # its limiter up; the loop is held weakly, as in ``_limiters``.
        self._last_limiter: tuple[Any, anyio.Semaphore] | None = None
        self._inflight: dict[str, asyncio.Future[Generation]] = {}
        self._replayed: set[str] = set()

    # -- configuration -------------------------------------------------------------------
    @property
    def output_mode(self) -> OutputMode:
        """The structured-output mode requests are sent in now (negotiated or pinned)."""
        return self._mode

    def get_config(self) -> dict[str, Any]:
        """Everything needed to rebuild this client, except the API key (never saved).

        ``structured_output_mode`` is the mode an ``"auto"`` negotiation settled on (``None``
        before one did), so a saved program starts from it.
        """
        settled = self.structured_output == "auto" and self._settled
        return {
            "model": self.model,
            "api_base": self.api_base,
            "max_concurrency": self.max_concurrency,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "retry_min_wait": self.retry_min_wait,
            "retry_max_wait": self.retry_max_wait,
            "cache": self._cache_setting,
            "structured_output": self.structured_output,
            "structured_output_mode": self._mode if settled else None,
            "name": self.name,
            "transport": self.transport_setting,
            **{k: v for k, v in self.litellm_kwargs.items() if _is_jsonable(v)},
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], api_key: str | None = None) -> LanguageModel:
        return cls(**config, api_key=api_key)

    def __repr__(self) -> str:
        return f"LanguageModel(model={self.model!r}, api_base={self.api_base!r})"

    # -- calls ---------------------------------------------------------------------------
    def _limiter(self) -> anyio.Semaphore:
        try:
            loop: Any = asyncio.get_running_loop()
        except RuntimeError:
            loop = self
        last = self._last_limiter
        if last is not None and last[0]() is loop:
            return last[1]
        limiter = self._limiters.get(loop)
        if limiter is None:
            limiter = _new_semaphore(self.max_concurrency)
            self._limiters[loop] = limiter
        self._last_limiter = (weakref.ref(loop), limiter)
        return limiter

    def _probe_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._probe_locks.get(loop)
        if lock is None:
            lock = self._probe_locks[loop] = asyncio.Lock()
        return lock

    def _request(
        self, messages: list[dict[str, str]], schema_name: str, schema: dict[str, Any]
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
        }
        if self._base_key is not None:
            request["api_base"] = self._replicas[0].base if self._replicas else self._base_key
        if self.max_tokens is not None:
            request["max_tokens"] = self.max_tokens
        if (rf := response_format_for(self._mode, schema_name, schema)) is not None:
            request["response_format"] = rf
        if self.litellm_kwargs:
            request.update(self.litellm_kwargs)
        return request

    def _set_mode(
        self, request: dict[str, Any], mode: OutputMode, output_model: type[pydantic.BaseModel]
    ) -> None:
        """Rebuild ``request``'s response_format for ``mode``."""
        rf = response_format_for(mode, output_model.__name__, json_schema_of(output_model))
        if rf is None:
            request.pop("response_format", None)
        else:
            request["response_format"] = rf

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

    async def generate(
        self, messages: list[dict[str, str]], output_model: type[pydantic.BaseModel]
    ) -> Generation:
        """Ask for one ``output_model`` instance; never raises for a per-call failure.

        Raises:
            LMConfigurationError: the provider rejected the credentials or the model name.
            LMCallsFailingError: inside a ``fit``/``evaluate`` with ``fail_fast``, the run's
                first calls all failed with the same error.
        """
        request = self._request(messages, output_model.__name__, json_schema_of(output_model))
        cache = self.cache
        if cache is None:
            return await self._generate_uncached(request, output_model, "")
        key = request_key(request)
        hit = await cache.get(key)
        if hit is not None:
            try:
                value = output_model.model_validate(hit["value"])
            except pydantic.ValidationError:
                value = None
            if value is not None:
                if not self._replay(key, hit):
                    add_usage(self, cache_hits=1)
                record_generation(self, None)
                if span_backend() is not None:
                    with span(f"{self.name}.call", "CHAT_MODEL", {"messages": messages}) as handle:
                        handle.set_attributes({"model": self.model, "cache_hit": True})
                        handle.set_outputs(hit["value"])
                return Generation(value, cached=True)
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Generation] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._generate_uncached(request, output_model, key)
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise, nobody logs it as lost
            raise
        finally:
            self._inflight.pop(key, None)

    async def _generate_uncached(
        self, request: dict[str, Any], output_model: type[pydantic.BaseModel], key: str
    ) -> Generation:
        tracing = span_backend() is not None
        started = time.perf_counter()
        manager: contextlib.AbstractContextManager[Any] = (
            span(
                f"{self.name}.call",
                "CHAT_MODEL",
                {
                    "messages": request["messages"],
                    "response_format": request.get("response_format"),
                },
            )
            if tracing
            else _NO_SPAN
        )
        store = self.cache is not None and bool(key)
        with manager as handle:
            try:
                value, usage = await self._call_with_retries(request, output_model)
            except LMConfigurationError:
                raise
            except Exception as exc:  # recorded failure, not a crash
                add_usage(self, failed_calls=1)
                error = f"{type(exc).__name__}: {exc}"
                logger.debug("LM call to %s failed after retries: %s", self.model, error)
                if tracing:
                    handle.set_attributes(
                        {
                            "model": self.model,
                            "error": error[:2000],
                            "latency_s": time.perf_counter() - started,
                            "cache_hit": False,
                            "structured_output": mode_of(request),
                        }
                    )
                record_generation(self, exc)  # may raise LMCallsFailingError (fail fast)
                return Generation(None, error=error)
            # The JSON form of the reply is only needed by the cache and the trace.
            raw = value.model_dump(mode="json") if tracing or store else None
            if tracing:
                prompt_tokens, completion_tokens, cost = usage
                handle.set_attributes(
                    {
                        "model": self.model,
                        "latency_s": time.perf_counter() - started,
                        "cache_hit": False,
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "cost": cost,
                        "structured_output": mode_of(request),
                    }
                )
                handle.set_outputs(raw)
        record_generation(self, None)
        if store:
            entry = {"value": raw, "usage": list(usage), "origin": call_origin.get()}
            await self.cache.put(key, entry)  # type: ignore[union-attr]
        return Generation(value)

    def _replay(self, key: str, hit: dict[str, Any]) -> bool:
        """Count a cached reply as the call it was, if this fit paid for it at this very step.

        A fit killed after its last backup and resumed runs the same steps again. The replies
        it paid for before the crash are on disk; the resumed steps get them without a request,
        and their usage is counted as the uninterrupted run counted it (``lm_calls``, tokens,
        cost), so its history matches an uninterrupted run's. The origin names the fit's run
        id, epoch and step, so a later step asking the same question again is an ordinary
        cache hit, as it would have been without the crash.

        Returns:
            Whether the hit was counted as a replayed call.
        """
        origin = call_origin.get()
        if origin is None or hit.get("origin") != origin or key in self._replayed:
            return False
        self._replayed.add(key)
        prompt_tokens, completion_tokens, cost = hit.get("usage") or (0, 0, 0.0)
        add_usage(
            self,
            calls=1,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost=cost,
        )
        return True

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

    async def _attempt_with_fallback(
        self, request: dict[str, Any], output_model: type[pydantic.BaseModel]
    ) -> tuple[pydantic.BaseModel, tuple[int, int, float]]:
        """One attempt, stepping down the structured-output modes while they are refused.

        Until a mode is settled, an ``"auto"`` client lets one request at a time through
        (the others wait for its verdict, then go out in the mode it found).
        """
        if not self._settled:
            async with self._probe_lock():
                if not self._settled:
                    try:
                        return await self._attempt_stepping_down(request, output_model)
                    finally:
                        # Any verdict (a reply, or an error that is not about the format)
                        # ends the one-at-a-time probe: requests that still carry a refused
                        # format step down on their own refusal.
                        self._settled = True
        return await self._attempt_stepping_down(request, output_model)

    async def _attempt_stepping_down(
        self, request: dict[str, Any], output_model: type[pydantic.BaseModel]
    ) -> tuple[pydantic.BaseModel, tuple[int, int, float]]:
        if self.structured_output == "auto" and MODES.index(mode_of(request)) < MODES.index(
            self._mode
        ):
            self._set_mode(request, self._mode, output_model)  # negotiated down meanwhile
        while True:
            try:
                return await self._attempt(request, output_model)
            except Exception as exc:
                self._raise_if_fatal(exc)
                mode = mode_of(request)
                if not is_format_refusal(exc, mode):
                    raise
                if self.structured_output != "auto":
                    raise StructuredOutputRefusedError(
                        f"{self.model} refused the pinned structured_output={mode!r}: "
                        f"{server_message(exc)}"
                    ) from exc
                lower = next_mode(mode)
                if lower is None:  # pragma: no cover - json_text carries no format to refuse
                    raise
                self._step_down(mode, lower, exc)
                self._set_mode(request, self._mode, output_model)

    def _step_down(self, refused: OutputMode, lower: OutputMode, exc: BaseException) -> None:
        """Record that ``refused`` does not work on this endpoint."""
        new = lower_mode(lower, self._mode)
        if new != self._mode:
            logger.debug(
                "%s at %s refused structured output %r (%s); trying %r.",
                self.model,
                self.api_base,
                refused,
                server_message(exc)[:300],
                new,
            )
            self._mode = new
            self._negotiated = True
            _ENDPOINT_MODES[(self.model, self._base_key)] = new

    def _mode_works(self, mode: OutputMode) -> None:
        """A reply came back in ``mode``: remember it and say so once, at INFO."""
        if self.structured_output != "auto" or mode != self._mode:
            return
        endpoint = (self.model, self._base_key)
        _ENDPOINT_MODES[endpoint] = mode
        if (self.model, self._base_key, mode) not in _LOGGED_MODES:
            _LOGGED_MODES.add((self.model, self._base_key, mode))
            logger.info(
                "%s%s: structured output negotiated to %r%s (pin it with structured_output=%r).",
                self.model,
                f" at {self.api_base}" if self.api_base else "",
                mode,
                " after refusals" if self._negotiated else "",
                mode,
            )

    def _raise_if_fatal(self, exc: Exception) -> None:
        """Raise for errors no retry can fix.

        Raises:
            LMConfigurationError: bad credentials, unknown model, no permission.
        """
        _error_classes()
        if isinstance(exc, _FATAL) or "missing credentials" in str(exc).lower():
            raise LMConfigurationError(
                f"{self.model} rejected the request ({type(exc).__name__}): {exc}. "
                "Check the model name, `api_base` and `api_key` (for a server "
                "without auth, pass any placeholder key)."
            ) from exc

    async def _litellm_send(self, request: dict[str, Any]) -> Any:
        """One request through litellm, with its own retries off: ours decide (and count)."""
        return await get_litellm().acompletion(
            **request,
            api_key=self._api_key,
            timeout=self.timeout,
            num_retries=0,
            max_retries=0,
        )

    async def _attempt(
        self, request: dict[str, Any], output_model: type[pydantic.BaseModel]
    ) -> tuple[pydantic.BaseModel, tuple[int, int, float]]:
        if self._replicas is not None:
            return await self._attempt_replicas(request, output_model)
        if self._http is not None:
            return await self._attempt_http(request, output_model)
        async with self._limiter():
            try:
                response = await self._litellm_send(request)
            except Exception:
                add_usage(self, calls=1)  # every request sent is a call, refused ones too
                raise
        return self._litellm_reply(response, request, output_model)

    def _litellm_reply(
        self, response: Any, request: dict[str, Any], output_model: type[pydantic.BaseModel]
    ) -> tuple[pydantic.BaseModel, tuple[int, int, float]]:
        """Count and validate a litellm response."""
        usage_info = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage_info, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage_info, "completion_tokens", 0) or 0)
        hidden = getattr(response, "_hidden_params", None) or {}
        cost = float(hidden.get("response_cost") or 0.0)
        content = response.choices[0].message.content or ""
        return self._counted_reply(
            content, prompt_tokens, completion_tokens, cost, request, output_model
        )

    async def _attempt_http(
        self, request: dict[str, Any], output_model: type[pydantic.BaseModel]
    ) -> tuple[pydantic.BaseModel, tuple[int, int, float]]:
        """The lean path's ``_attempt``: same counting, same validation, same errors."""
        async with self._limiter():
            try:
                content, prompt_tokens, completion_tokens = await self._http.complete(  # type: ignore[union-attr]
                    request
                )
            except Exception:
                add_usage(self, calls=1)
                raise
        return self._http_reply(content, prompt_tokens, completion_tokens, request, output_model)

    def _http_reply(
        self,
        content: str,
        prompt_tokens: int,
        completion_tokens: int,
        request: dict[str, Any],
        output_model: type[pydantic.BaseModel],
    ) -> tuple[pydantic.BaseModel, tuple[int, int, float]]:
        """Count and validate a lean-path reply (cost as litellm would report it)."""
        cost = _http.token_cost(self.model, prompt_tokens, completion_tokens)
        return self._counted_reply(
            content, prompt_tokens, completion_tokens, cost, request, output_model
        )

    def _counted_reply(
        self,
        content: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost: float,
        request: dict[str, Any],
        output_model: type[pydantic.BaseModel],
    ) -> tuple[pydantic.BaseModel, tuple[int, int, float]]:
        """What both transports do with an answered request: count it, note that its
        structured-output mode works, validate the reply."""
        add_usage(
            self,
            calls=1,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost=cost,
        )
        self._mode_works(mode_of(request))
        return self._validate(content, output_model), (prompt_tokens, completion_tokens, cost)

    def _replica_slots(self) -> tuple[anyio.Semaphore, list[anyio.Semaphore]]:
        """This loop's limiters: one over all replicas' slots, and one per replica."""
        loop = asyncio.get_running_loop()
        limiters = self._replica_limiters.get(loop)
        if limiters is None:
            count = len(self._replicas or ())
            limiters = (
                _new_semaphore(self.max_concurrency * count),
                [_new_semaphore(self.max_concurrency) for _ in range(count)],
            )
            self._replica_limiters[loop] = limiters
        return limiters

    async def _attempt_replicas(
        self, request: dict[str, Any], output_model: type[pydantic.BaseModel]
    ) -> tuple[pydantic.BaseModel, tuple[int, int, float]]:
        """One attempt over the replicas: least loaded first, failing over on transient errors.

        The replica is chosen when a slot frees, not when the request arrives: a request
        first waits for any of the ``replicas x max_concurrency`` slots, then goes to the
        replica with the fewest requests in flight (which has a free slot). Choosing on
        arrival would split a batch evenly up front, so a slower replica (less CPU, a longer
        prompt mix, a busy engine) would keep its share queued while the others sat idle;
        choosing on a free slot makes each replica pull work at the pace it answers.

        Every replica is tried at most once per attempt; when all failed transiently, the last
        error goes to the usual retry-with-backoff. A format refusal is not failed over (the
        replicas run the same server: the negotiation steps down instead).
        """
        replicas = self._replicas or []
        tried: set[int] = set()
        self._rotation = (self._rotation + 1) % len(replicas)
        start = self._rotation
        any_slot, slots = self._replica_slots()
        async with any_slot:
            while True:
                index = min(
                    (i for i in range(len(replicas)) if i not in tried),
                    key=lambda i: (replicas[i].in_flight, (i - start) % len(replicas)),
                )
                tried.add(index)
                replica = replicas[index]
                replica.in_flight += 1
                try:
                    # Free at once unless failing over to a replica that is full.
                    async with slots[index]:
                        try:
                            if replica.http is not None:
                                content, prompt, completion = await replica.http.complete(request)
                                reply = None
                            else:
                                reply = await self._litellm_send(
                                    {**request, "api_base": replica.base}
                                )
                        except Exception as exc:
                            add_usage(self, calls=1)
                            if (
                                len(tried) < len(replicas)
                                and _is_transient(exc)
                                and not is_format_refusal(exc, mode_of(request))
                            ):
                                logger.debug(
                                    "%s: replica %s failed (%s); failing over.",
                                    self.name,
                                    replica.base,
                                    type(exc).__name__,
                                )
                                continue
                            raise
                finally:
                    replica.in_flight -= 1
                break
        if reply is not None:
            return self._litellm_reply(reply, request, output_model)
        return self._http_reply(content, prompt, completion, request, output_model)

    @staticmethod
    def _validate(content: str, output_model: type[pydantic.BaseModel]) -> pydantic.BaseModel:
        """The reply as ``output_model``, or :class:`InvalidOutputError` (retried)."""
        try:
            raw = parse_json_reply(content)
            value = output_model.model_validate(raw)
        except (ValueError, pydantic.ValidationError) as exc:
            raise InvalidOutputError(
                f"Reply does not match {output_model.__name__}: {str(exc)[:500]}"
            ) from exc
        return value


def _is_jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
