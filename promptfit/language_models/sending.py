"""Sending one request: through litellm or the lean HTTP transport, to one replica or several.

Both transports are counted and validated the same way (:meth:`Sending._counted_reply`); with
several replicas each request goes to the least loaded one and fails over on a transient
error. Split out of ``language_model.py``; :class:`Sending` is a mixin of
:class:`~promptfit.language_models.LanguageModel`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import pydantic

from promptfit.language_models import http_transport as _http
from promptfit.language_models._litellm import get_litellm
from promptfit.language_models.redact import redact_url
from promptfit.language_models.request import parse_json_reply
from promptfit.language_models.retrying import InvalidOutputError, _is_transient
from promptfit.language_models.scope import add_usage
from promptfit.language_models.structured import OutputMode, is_format_refusal, mode_of

__all__ = ["Replica", "Sending", "new_semaphore"]

logger = logging.getLogger("promptfit")


def new_semaphore(value: int) -> anyio.Semaphore:
    # ``fast_acquire`` (anyio >= 4.5) skips the extra trip through the event loop that an
    # uncontended acquire otherwise makes; the HTTP request right after yields anyway.
    try:
        return anyio.Semaphore(value, fast_acquire=True)
    except TypeError:  # pragma: no cover - older anyio
        return anyio.Semaphore(value)


#: Seconds a replica that failed transiently is tried only after the others; doubled on each
#: further failure in a row, up to :data:`REPLICA_COOLDOWN_MAX`, and reset by a success.
REPLICA_COOLDOWN = 1.0
REPLICA_COOLDOWN_MAX = 30.0


@dataclass(slots=True)
class Replica:
    """One replica of a model: its URL, its lean-path client, its requests in flight, and its
    cooldown after transient failures (so that a dead replica is not tried first by every
    request: it has the fewest requests in flight, because it fails fast)."""

    base: str
    http: _http.HTTPTransport | None
    in_flight: int = 0
    failures: int = 0
    cooling_until: float = 0.0

    def cooling(self, now: float) -> float:
        """Seconds left of this replica's cooldown (0 when it is in service)."""
        return max(0.0, self.cooling_until - now)

    def failed(self, now: float) -> None:
        self.failures += 1
        delay = min(REPLICA_COOLDOWN_MAX, REPLICA_COOLDOWN * 2 ** (self.failures - 1))
        self.cooling_until = now + delay

    def answered(self) -> None:
        self.failures = 0
        self.cooling_until = 0.0


def _reply_text(response: Any) -> str:
    """A litellm response as the JSON the server sent (near enough), cut for a message."""
    try:
        text = response.model_dump_json(exclude_none=True)
    except Exception:  # any object: its repr will do
        text = repr(response)
    return str(text)[:300]


class Sending:
    """How :class:`~promptfit.language_models.LanguageModel` sends a request (a mixin)."""

    model: str
    name: str
    timeout: float
    max_concurrency: int
    _api_key: str | None
    _http: _http.HTTPTransport | None
    _replicas: list[Replica] | None
    _rotation: int
    _limiters: weakref.WeakKeyDictionary[Any, anyio.Semaphore]
    _replica_limiters: weakref.WeakKeyDictionary[Any, tuple[anyio.Semaphore, list[anyio.Semaphore]]]
    _last_limiter: tuple[Any, anyio.Semaphore] | None

    if TYPE_CHECKING:  # provided by Negotiation

        def _mode_works(self, mode: OutputMode) -> None: ...

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
            limiter = new_semaphore(self.max_concurrency)
            self._limiters[loop] = limiter
        self._last_limiter = (weakref.ref(loop), limiter)
        return limiter

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
        choices = getattr(response, "choices", None)
        if not choices:
            # A 200 without choices (a gateway's placeholder, a misrouted endpoint): say so
            # with the reply in it, as the lean path does, instead of an IndexError, and count
            # the request, which was sent.
            add_usage(self, calls=1)
            raise _http.APIError(
                f"OpenAIException - The reply is not a chat completion: {_reply_text(response)!r}",
                status_code=200,
            )
        content = choices[0].message.content or ""
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
                new_semaphore(self.max_concurrency * count),
                [new_semaphore(self.max_concurrency) for _ in range(count)],
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

        A replica that just failed transiently cools down (1 s, doubling while it keeps
        failing, at most 30 s): until then it is tried only after every replica in service,
        so a dead replica costs one failed request per cooldown instead of one per request.
        A success ends the cooldown.

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
                now = time.monotonic()
                index = min(
                    (i for i in range(len(replicas)) if i not in tried),
                    key=lambda i: (
                        replicas[i].cooling(now),
                        replicas[i].in_flight,
                        (i - start) % len(replicas),
                    ),
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
                            transient = _is_transient(exc) and not is_format_refusal(
                                exc, mode_of(request)
                            )
                            if transient:
                                replica.failed(time.monotonic())
                            if transient and len(tried) < len(replicas):
                                logger.debug(
                                    "%s: replica %s failed (%s); failing over.",
                                    self.name,
                                    redact_url(replica.base),
                                    type(exc).__name__,
                                )
                                continue
                            raise
                finally:
                    replica.in_flight -= 1
                replica.answered()
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
