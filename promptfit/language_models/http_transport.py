"""The lean transport: chat completions straight to an OpenAI-compatible server over aiohttp.

litellm's async path costs several milliseconds of CPU per call (the benchmark in
``docs/benchmarks.md``), which, against a fast local server (vLLM, SGLang, llama.cpp,
Ollama's OpenAI API), bounds a whole optimization run. For ``openai/<model>`` with an
``api_base`` the request is a plain ``POST {api_base}/chat/completions``; this module sends it
on one pooled aiohttp session per event loop and reads back only what promptfit uses (the
content, the token usage).

Everything around the request (structured-output negotiation, retries and ``Retry-After``,
the fatal/transient split, the cache, spans, usage) stays in
:class:`~promptfit.language_models.LanguageModel` and is shared with the litellm path. To make
that possible, an HTTP error becomes an exception of the same class *name*, status code,
``message``, ``body`` and ``headers`` as litellm's mapping of the same reply
(:class:`RateLimitError` for 429, :class:`ServiceUnavailableError` for 503...), without
importing litellm.

aiohttp rather than httpx: on the benchmark workload (1,000 calls, concurrency 64 and 256,
loopback) aiohttp used a fraction of httpx's CPU per call; see ``docs/benchmarks.md``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import weakref
from collections.abc import AsyncIterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "BODY_PARAMS",
    "APIConnectionError",
    "APIError",
    "AuthenticationError",
    "BadGatewayError",
    "BadRequestError",
    "HTTPTransport",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServiceUnavailableError",
    "Timeout",
    "TransportError",
    "UnprocessableEntityError",
    "lean_path_possible",
    "token_cost",
]

# Extra ``LanguageModel`` keyword arguments the lean path sends as they are, in the JSON body
# (plain OpenAI chat-completions parameters). Anything else (``custom_llm_provider``,
# ``extra_headers``, ``api_version``...) is litellm's business, so "auto" picks litellm.
BODY_PARAMS = frozenset(
    {
        "top_p",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "user",
        "top_k",
        "min_p",
        "repetition_penalty",
    }
)


class TransportError(Exception):
    """An error reply (or no reply) from the server, shaped like litellm's exceptions.

    ``status_code``, ``message``, ``body`` and ``headers`` are what
    :mod:`~promptfit.language_models.structured` and the retry logic read from litellm's
    exceptions, so both transports are judged by the same code.
    """

    default_status: int | None = None

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code if status_code is not None else self.default_status
        self.body = body
        self.headers = headers


class APIError(TransportError):
    """Any other error status (5xx ones are retried, as litellm's ``APIError`` are)."""


class BadRequestError(TransportError):
    default_status = 400


class AuthenticationError(TransportError):
    default_status = 401


class PermissionDeniedError(TransportError):
    default_status = 403


class NotFoundError(TransportError):
    default_status = 404


class UnprocessableEntityError(TransportError):
    default_status = 422


class RateLimitError(TransportError):
    default_status = 429


class InternalServerError(TransportError):
    default_status = 500


class BadGatewayError(TransportError):
    default_status = 502


class ServiceUnavailableError(TransportError):
    default_status = 503


class Timeout(TransportError):
    default_status = 408


class APIConnectionError(TransportError):
    """The server could not be reached, or the connection broke (retried)."""


_BY_STATUS: dict[int, type[TransportError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: Timeout,
    422: UnprocessableEntityError,
    429: RateLimitError,
    500: InternalServerError,
    502: BadGatewayError,
    503: ServiceUnavailableError,
    504: Timeout,
}

TRANSIENT: tuple[type[TransportError], ...] = (
    RateLimitError,
    Timeout,
    APIConnectionError,
    InternalServerError,
    ServiceUnavailableError,
    BadGatewayError,
)
FATAL: tuple[type[TransportError], ...] = (
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
)


def error_for(status: int, text: str, headers: Mapping[str, str]) -> TransportError:
    """The exception for an error reply: class by status, message from the body if JSON."""
    try:
        body: Any = json.loads(text) if text else None
    except ValueError:
        body = text
    message = text
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            message = error["message"]
        elif isinstance(error, str):
            message = error
    cls = _BY_STATUS.get(status, APIError)
    return cls(
        f"OpenAIException - {message or f'Error code: {status}'}",
        status_code=status,
        body=body if body is not None else {},
        headers=dict(headers),
    )


@lru_cache(maxsize=1)
def _price_map() -> dict[str, Any]:
    """litellm's bundled price map, read as JSON (without importing litellm)."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations)))
    try:
        data = json.loads((path / "model_prices_and_context_window_backup.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _price_entry(model: str) -> dict[str, Any] | None:
    name = model.split("/", 1)[1] if model.startswith("openai/") else model
    prices = _price_map()
    for key in (model, name):
        entry = prices.get(key)
        if isinstance(entry, dict) and key != "sample_spec":
            return entry
    return None


def has_price(model: str) -> bool:
    """Whether litellm's price table knows ``model`` (then it would report a cost)."""
    return _price_entry(model) is not None


def token_cost(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """Cost by litellm's per-token prices; 0 for a model it has no price for, as litellm."""
    entry = _price_entry(model)
    if entry is None:
        return 0.0
    inp = float(entry.get("input_cost_per_token") or 0.0)
    out = float(entry.get("output_cost_per_token") or 0.0)
    return prompt_tokens * inp + completion_tokens * out


def lean_path_possible(model: str, api_base: str | None, extra: Mapping[str, Any]) -> str | None:
    """Why the lean path cannot serve this client (``None``: it can)."""
    if not model.startswith("openai/"):
        return "only 'openai/<model>' models go over HTTP directly"
    if not api_base:
        return "it needs an `api_base`"
    unknown = sorted(set(extra) - BODY_PARAMS)
    if unknown:
        return f"it does not send the litellm arguments {unknown}"
    return None


async def _closer(session: aiohttp.ClientSession) -> AsyncIterator[None]:
    """Closes ``session`` when the event loop shuts down its async generators.

    ``asyncio.run`` (and anyio's runner) ``aclose()`` every live async generator before the
    loop closes, so the pooled connections are closed in their own loop, with no "Unclosed
    client session" warning, however many ``asyncio.run`` calls a program makes.
    """
    try:
        yield
    finally:
        await session.close()


class HTTPTransport:
    """One pooled aiohttp session per event loop for one language model's endpoint."""

    def __init__(self, api_base: str, api_key: str | None, timeout: float) -> None:
        self.url = api_base.rstrip("/") + "/chat/completions"
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self._headers = {"Content-Type": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._has_key = bool(key)
        import aiohttp  # here, not at module level: ``import promptfit`` stays cheap

        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._sessions: weakref.WeakKeyDictionary[Any, tuple[aiohttp.ClientSession, Any]] = (
            weakref.WeakKeyDictionary()
        )

    async def _session(self) -> aiohttp.ClientSession:
        import aiohttp

        loop = asyncio.get_running_loop()
        entry = self._sessions.get(loop)
        if entry is not None and not entry[0].closed:
            return entry[0]
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            timeout=self._timeout,
            headers=self._headers,
            json_serialize=json.dumps,
        )
        closer = _closer(session)
        await closer.__anext__()  # registered with the loop; closed at its shutdown
        self._sessions[loop] = (session, closer)
        return session

    async def complete(self, request: Mapping[str, Any]) -> tuple[str, int, int]:
        """POST one chat completion; the reply's content and token counts.

        Raises:
            TransportError: an error status (by class, as litellm maps it), a timeout, a
                broken connection, or a reply that is not a chat completion.
        """
        if not self._has_key:
            raise AuthenticationError(
                "OpenAIException - Missing credentials: pass api_key= (any placeholder for "
                "a server without auth) or set OPENAI_API_KEY.",
                status_code=401,
            )
        body = {k: v for k, v in request.items() if k != "api_base"}
        model = body["model"]
        if model.startswith("openai/"):
            body["model"] = model[7:]
        session = await self._session()
        import aiohttp

        try:
            async with session.post(self.url, json=body) as response:
                text = await response.text()
                if response.status >= 400:
                    raise error_for(response.status, text, response.headers)
        except TransportError:
            raise
        except TimeoutError as exc:
            raise Timeout(
                f"OpenAIException - Request timed out after {self._timeout.total} s."
            ) from exc
        except aiohttp.ClientError as exc:
            # litellm reports a refused or broken connection to an OpenAI-compatible server
            # as this (the openai SDK's APIConnectionError, mapped): same class, same text.
            raise InternalServerError(
                "OpenAIException - Connection error.", status_code=500
            ) from exc
        try:
            data = json.loads(text)
            content = data["choices"][0]["message"].get("content") or ""
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise APIError(
                f"OpenAIException - The reply is not a chat completion: {text[:300]!r}",
                status_code=response.status,
            ) from exc
        return (
            content if isinstance(content, str) else str(content),
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
        )
