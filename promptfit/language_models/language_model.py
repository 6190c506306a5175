"""The language model client: every LM call in promptfit goes through here.

One :class:`LanguageModel` wraps one litellm model string. It bounds concurrency, caches replies
by request, retries transient failures with bounded exponential backoff that honours
``Retry-After``, validates replies against the requested data model, and counts usage. A call
that still fails becomes a recorded failure (``None``), never a crash, except for errors that no
retry can fix (bad key, unknown model), which stop the run at once with
:class:`~promptfit.errors.LMConfigurationError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import pydantic
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from promptfit.data.data_model import json_schema_of
from promptfit.errors import ConfigurationError, LMConfigurationError
from promptfit.language_models._litellm import litellm
from promptfit.language_models.cache import (
    ResponseCache,
    call_origin,
    default_cache_path,
    request_key,
)
from promptfit.language_models.request import parse_json_reply, response_format
from promptfit.language_models.usage import Usage
from promptfit.observability.spans import span, span_backend

__all__ = ["Generation", "LanguageModel"]

logger = logging.getLogger("promptfit")

StructuredOutput = Literal["auto", "json_schema", "json_text"]


class InvalidOutputError(ValueError):
    """The reply was not valid JSON for the requested data model (retryable)."""


@dataclass(frozen=True, slots=True)
class Generation:
    """The outcome of one generation: a validated value, or the error that prevented it."""

    value: pydantic.BaseModel | None
    error: str | None = None
    cached: bool = False


_TRANSIENT = (
    litellm.RateLimitError,
    litellm.Timeout,
    litellm.APIConnectionError,
    litellm.InternalServerError,
    litellm.ServiceUnavailableError,
    litellm.BadGatewayError,
)
_FATAL = (litellm.AuthenticationError, litellm.NotFoundError, litellm.PermissionDeniedError)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (InvalidOutputError, *_TRANSIENT)):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(exc, litellm.APIError) and isinstance(status, int) and status >= 500


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


def _is_unsupported_schema(exc: BaseException) -> bool:
    if isinstance(exc, litellm.UnsupportedParamsError):
        return True
    if isinstance(exc, litellm.BadRequestError):
        text = str(exc).lower()
        return "response_format" in text or "json_schema" in text
    return False


class _NoopSpan:
    """What an LM call records into when no tracing backend is installed."""

    def set_outputs(self, outputs: Any) -> None:
        return None

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        return None


# With tracing off (the default) a call opens this shared, reusable context instead of a
# span: no generator, no input or attribute dicts per call.
_NO_SPAN = contextlib.nullcontext(_NoopSpan())


def _new_semaphore(value: int) -> anyio.Semaphore:
    # ``fast_acquire`` (anyio >= 4.5) skips the extra trip through the event loop that an
    # uncontended acquire otherwise makes; the HTTP request right after yields anyway.
    try:
        return anyio.Semaphore(value, fast_acquire=True)
    except TypeError:  # pragma: no cover - older anyio
        return anyio.Semaphore(value)


def _retry_state(attempt_number: int, exc: BaseException) -> RetryCallState:
    """The tenacity state ``LanguageModel._wait`` reads, for a failed attempt."""
    state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
    state.attempt_number = attempt_number
    state.set_exception((type(exc), exc, exc.__traceback__))
    return state


class LanguageModel:
    """A language model reached through litellm.

    Args:
        model: Any litellm model string (``"openai/gpt-4o-mini"``, ``"ollama/llama3"``...), or
            ``"local/gemma-3-270m"`` for the embedded offline model (``promptfit[local]``).
        api_base: Endpoint URL for OpenAI-compatible servers.
        api_key: The key. Used for requests only: never saved, cached, logged or tracked.
        max_concurrency: Most requests in flight at once for this model.
        temperature: Sampling temperature (0 makes runs reproducible on deterministic servers).
        max_tokens: Cap on completion tokens, or ``None`` for the provider's default.
        timeout: Seconds before one request is abandoned (and retried).
        max_retries: Retries after the first attempt for transient errors and invalid JSON.
        retry_min_wait: First backoff in seconds; it doubles per retry, with jitter.
        retry_max_wait: Longest single wait, also the cap on a provider's ``Retry-After``.
        cache: ``True`` (default) caches replies in memory and in promptfit's shared on-disk
            cache (``~/.cache/promptfit/responses.sqlite`` on Linux, bounded in size; set
            ``PROMPTFIT_CACHE_DIR`` to move it), so a repeated or resumed fit pays for no
            call twice; a path uses that SQLite file instead; ``False`` disables caching.
        structured_output: ``"auto"`` asks for a JSON-schema ``response_format`` and falls
            back to JSON-in-text if the provider rejects it; ``"json_schema"`` or
            ``"json_text"`` force one mode.
        name: A name for logs and saved files (defaults to ``model``).
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
        api_base: str | None = None,
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
        name: str | None = None,
        **litellm_kwargs: Any,
    ) -> None:
        if not isinstance(model, str) or ("/" not in model and not model):
            raise ConfigurationError("`model` must be a litellm model string like 'openai/gpt-4o'.")
        if max_concurrency < 1:
            raise ConfigurationError(f"`max_concurrency` must be >= 1, got {max_concurrency}.")
        if max_retries < 0:
            raise ConfigurationError(f"`max_retries` must be >= 0, got {max_retries}.")
        if structured_output not in ("auto", "json_schema", "json_text"):
            raise ConfigurationError(
                "`structured_output` must be 'auto', 'json_schema' or 'json_text', "
                f"got {structured_output!r}."
            )
        if "api_key" in litellm_kwargs:
            raise ConfigurationError("Pass `api_key` as its own argument.")
        self.model = model
        self.api_base = api_base
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
        self._mode: Literal["json_schema", "json_text"] = (
            "json_text" if structured_output == "json_text" else "json_schema"
        )
        self._limiters: weakref.WeakKeyDictionary[Any, anyio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        # The last (loop, limiter) pair, so a call does not build a weak reference to look
        # its limiter up; the loop is held weakly, as in ``_limiters``.
        self._last_limiter: tuple[Any, anyio.Semaphore] | None = None
        self._inflight: dict[str, asyncio.Future[Generation]] = {}
        self._replayed: set[str] = set()
        if model.startswith("local/"):
            from promptfit.language_models.local import register_local_provider

            register_local_provider(model)

    # -- configuration -------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Everything needed to rebuild this client, except the API key (never saved)."""
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
            "name": self.name,
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

    def _request(
        self, messages: list[dict[str, str]], schema_name: str, schema: dict[str, Any]
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
        }
        if self.api_base is not None:
            request["api_base"] = self.api_base
        if self.max_tokens is not None:
            request["max_tokens"] = self.max_tokens
        if self._mode == "json_schema":
            request["response_format"] = response_format(schema_name, schema)
        if self.litellm_kwargs:
            request.update(self.litellm_kwargs)
        return request

    def _wait(self, state: RetryCallState) -> float:
        backoff = wait_exponential_jitter(initial=self.retry_min_wait, max=self.retry_max_wait)(
            state
        )
        outcome = state.outcome
        asked = _retry_after(outcome.exception() if outcome is not None else None)
        if asked is None:
            return backoff
        return min(max(asked, min(backoff, self.retry_min_wait)), self.retry_max_wait)

    async def generate(
        self, messages: list[dict[str, str]], output_model: type[pydantic.BaseModel]
    ) -> Generation:
        """Ask for one ``output_model`` instance; never raises for a per-call failure.

        Raises:
            LMConfigurationError: the provider rejected the credentials or the model name.
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
                    self.usage.add(cache_hits=1)
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
                self.usage.add(failed_calls=1)
                error = f"{type(exc).__name__}: {exc}"
                logger.debug("LM call to %s failed after retries: %s", self.model, error)
                if tracing:
                    handle.set_attributes(
                        {
                            "model": self.model,
                            "error": error[:2000],
                            "latency_s": time.perf_counter() - started,
                            "cache_hit": False,
                        }
                    )
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
                    }
                )
                handle.set_outputs(raw)
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
        self.usage.add(
            calls=1, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost=cost
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
        self.usage.add(retries=1)
        await asyncio.sleep(self._wait(_retry_state(1, first_error)))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries),
            # tenacity counts from 1 again; the backoff continues from the bare attempt.
            wait=lambda state: self._wait(
                _retry_state(state.attempt_number + 1, state.outcome.exception())  # type: ignore[union-attr,arg-type]
            ),
            retry=retry_if_exception(_is_transient),
            reraise=True,
            before_sleep=lambda _: self.usage.add(retries=1),
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt_with_fallback(request, output_model)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt_with_fallback(
        self, request: dict[str, Any], output_model: type[pydantic.BaseModel]
    ) -> tuple[pydantic.BaseModel, tuple[int, int, float]]:
        try:
            return await self._attempt(request, output_model)
        except Exception as exc:
            if not self._fall_back_to_text(request, exc):
                raise
        # The provider rejected the JSON-schema response_format: same attempt, as text.
        return await self._attempt(request, output_model)

    def _fall_back_to_text(self, request: dict[str, Any], exc: Exception) -> bool:
        """Raise for errors no retry can fix; switch to JSON-in-text if the schema was refused.

        Returns:
            Whether the request was switched to JSON-in-text (and should be sent again).

        Raises:
            LMConfigurationError: bad credentials, unknown model, no permission.
        """
        if isinstance(exc, _FATAL) or "missing credentials" in str(exc).lower():
            raise LMConfigurationError(
                f"{self.model} rejected the request ({type(exc).__name__}): {exc}. "
                "Check the model name, `api_base` and `api_key` (for a server "
                "without auth, pass any placeholder key)."
            ) from exc
        if (
            "response_format" in request
            and self.structured_output == "auto"
            and _is_unsupported_schema(exc)
        ):
            # Requests already in flight when the first refusal arrived still carry the
            # schema: each switches on its own refusal, so none of them fails for good.
            if self._mode == "json_schema":
                logger.info(
                    "%s does not accept a JSON-schema response_format; falling back to JSON "
                    "in text.",
                    self.model,
                )
                self._mode = "json_text"
            request.pop("response_format", None)
            return True
        return False

    async def _attempt(
        self, request: dict[str, Any], output_model: type[pydantic.BaseModel]
    ) -> tuple[pydantic.BaseModel, tuple[int, int, float]]:
        async with self._limiter():
            response = await litellm.acompletion(
                **request,
                api_key=self._api_key,
                timeout=self.timeout,
                num_retries=0,
                max_retries=0,
            )
        usage_info = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage_info, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage_info, "completion_tokens", 0) or 0)
        hidden = getattr(response, "_hidden_params", None) or {}
        cost = float(hidden.get("response_cost") or 0.0)
        self.usage.add(
            calls=1, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost=cost
        )
        content = response.choices[0].message.content or ""
        try:
            raw = parse_json_reply(content)
            value = output_model.model_validate(raw)
        except (ValueError, pydantic.ValidationError) as exc:
            raise InvalidOutputError(
                f"Reply does not match {output_model.__name__}: {str(exc)[:500]}"
            ) from exc
        return value, (prompt_tokens, completion_tokens, cost)


def _is_jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
