"""The language model client: every LM call in promptfit goes through here.

One :class:`LanguageModel` wraps one litellm model string. Its requests go through litellm, or, for
an OpenAI-compatible server (``openai/<model>`` with ``api_base``), over the lean HTTP transport of
:mod:`.http_transport`; everything else here is shared by both paths. It bounds concurrency, caches
replies by request, retries transient failures with bounded exponential backoff that honours
``Retry-After``, validates replies against the requested data model, and counts usage. A call that
still fails becomes a recorded failure (``None``), never a crash, except for errors that no retry
can fix (bad key, unknown model), which stop the run at once with
:class:`~promptfit.errors.LMConfigurationError`.

The client is one class made of four parts, one module each: the settings checks
(:mod:`.arguments`), the retry policy and error classes (:mod:`.retrying`), structured-output
negotiation (:mod:`.negotiation`) and sending over either transport (:mod:`.sending`). This
module keeps construction, configuration, the cache and the public ``generate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import pydantic

from promptfit.data.data_model import json_schema_of
from promptfit.errors import ConfigurationError, LMConfigurationError
from promptfit.language_models import http_transport as _http
from promptfit.language_models.arguments import (
    TRANSPORTS,
    Transport,
    check_arguments,
    check_route,
    is_jsonable,
    replica_bases,
)
from promptfit.language_models.cache import (
    ResponseCache,
    call_origin,
    default_cache_path,
    request_key,
)
from promptfit.language_models.negotiation import _CONFIRMED, _ENDPOINT_MODES, Negotiation
from promptfit.language_models.redact import redact_url
from promptfit.language_models.retrying import (
    InvalidOutputError,
    Retrying,
    StructuredOutputRefusedError,
)
from promptfit.language_models.scope import add_usage, record_generation
from promptfit.language_models.sending import Replica, Sending
from promptfit.language_models.structured import (
    MODES,
    OutputMode,
    StructuredOutput,
    mode_of,
    response_format_for,
)
from promptfit.language_models.usage import Usage
from promptfit.observability.spans import span, span_backend

__all__ = [
    "Generation",
    "InvalidOutputError",
    "LanguageModel",
    "StructuredOutputRefusedError",
    "Transport",
]

logger = logging.getLogger("promptfit")


@dataclass(frozen=True, slots=True)
class Generation:
    """The outcome of one generation: a validated value, or the error that prevented it."""

    value: pydantic.BaseModel | None
    error: str | None = None
    cached: bool = False


class _NoopSpan:
    """What an LM call records into when no tracing backend is installed."""

    def set_outputs(self, outputs: Any) -> None:
        return None

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        return None


# With tracing off (the default) a call opens this shared, reusable context instead of a
# span: no generator, no input or attribute dicts per call.
_NO_SPAN = contextlib.nullcontext(_NoopSpan())


class LanguageModel(Retrying, Negotiation, Sending):
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
            call twice; a path uses that SQLite file instead (an empty path or a directory is
            a ``ConfigurationError``); ``False`` disables caching.
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
        bases = replica_bases(api_base)
        check_arguments(
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
        if transport not in TRANSPORTS:
            raise ConfigurationError(
                f"`transport` must be one of {', '.join(map(repr, TRANSPORTS))}, got {transport!r}."
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
            check_route(model, bases[0] if bases else None, litellm_kwargs)
        self.model = model
        self.api_base = list(api_base) if isinstance(api_base, list | tuple) else api_base
        # Where requests go, as a hashable key (the negotiated-mode memory is per endpoint).
        self._base_key: str | tuple[str, ...] | None = (
            tuple(bases) if len(bases) > 1 else (bases[0] if bases else None)
        )
        self._replicas: list[Replica] | None = None
        if len(bases) > 1:
            self._replicas = [
                Replica(
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
        # Whether the mode is known to work (saved by get_config only then): a failed run
        # must not save the mode it merely started in as the negotiated one.
        self._confirmed = structured_output_mode is not None or endpoint in _CONFIRMED
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

        ``structured_output_mode`` is the mode an ``"auto"`` negotiation settled on, so a saved
        program starts from it: ``None`` until a reply came back in it (a run that failed
        from its start saves no mode it never saw work).
        """
        settled = self.structured_output == "auto" and self._confirmed
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
            **{k: v for k, v in self.litellm_kwargs.items() if is_jsonable(v)},
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], api_key: str | None = None) -> LanguageModel:
        return cls(**config, api_key=api_key)

    def __repr__(self) -> str:
        return f"LanguageModel(model={self.model!r}, api_base={redact_url(self.api_base)!r})"

    # -- calls ---------------------------------------------------------------------------
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
