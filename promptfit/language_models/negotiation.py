"""Structured-output negotiation: find the JSON mode an endpoint accepts, and remember it.

An ``"auto"`` client starts at the richest mode and steps down while the server answers that
it does not support the format; the mode that works is remembered per endpoint for the whole
process (a second client of the same server starts there) and saved with the program. Until a
mode is settled, one request at a time probes, so a refusing server costs one refused request
per mode. Split out of ``language_model.py``; :class:`Negotiation` is a mixin of
:class:`~promptfit.language_models.LanguageModel`. See docs/concepts/own-server.md.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING, Any

import pydantic

from promptfit.data.data_model import json_schema_of
from promptfit.language_models.redact import redact_url
from promptfit.language_models.retrying import StructuredOutputRefusedError
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

__all__ = ["Negotiation"]

logger = logging.getLogger("promptfit")

# The mode each endpoint (model string, api_base) was last found to accept, so a second
# client of the same server starts there instead of negotiating again.
_ENDPOINT_MODES: dict[tuple[str, Any], OutputMode] = {}
# Endpoints whose remembered mode was seen to work (a reply came back in it). A step-down
# alone is remembered too (a second client need not be refused again), but only a mode that
# worked is saved as negotiated.
_CONFIRMED: set[tuple[str, Any]] = set()
# Endpoints whose working mode was logged at INFO already (once per process).
_LOGGED_MODES: set[tuple[str, Any, OutputMode]] = set()


class Negotiation:
    """The structured-output negotiation of :class:`~promptfit.language_models.LanguageModel`
    (a mixin)."""

    model: str
    api_base: str | list[str] | None
    structured_output: StructuredOutput
    _base_key: str | tuple[str, ...] | None
    _mode: OutputMode
    _settled: bool
    _confirmed: bool
    _negotiated: bool
    _probe_locks: weakref.WeakKeyDictionary[Any, asyncio.Lock]

    if TYPE_CHECKING:  # provided by Sending and Retrying

        async def _attempt(
            self, request: dict[str, Any], output_model: type[pydantic.BaseModel]
        ) -> tuple[pydantic.BaseModel, tuple[int, int, float]]: ...

        def _raise_if_fatal(self, exc: Exception) -> None: ...

    def _probe_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._probe_locks.get(loop)
        if lock is None:
            lock = self._probe_locks[loop] = asyncio.Lock()
        return lock

    def _set_mode(
        self, request: dict[str, Any], mode: OutputMode, output_model: type[pydantic.BaseModel]
    ) -> None:
        """Rebuild ``request``'s response_format for ``mode``."""
        rf = response_format_for(mode, output_model.__name__, json_schema_of(output_model))
        if rf is None:
            request.pop("response_format", None)
        else:
            request["response_format"] = rf

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
        _CONFIRMED.add(endpoint)
        self._confirmed = True
        if (self.model, self._base_key, mode) not in _LOGGED_MODES:
            _LOGGED_MODES.add((self.model, self._base_key, mode))
            logger.info(
                "%s%s: structured output negotiated to %r%s (pin it with structured_output=%r).",
                self.model,
                f" at {redact_url(self.api_base)}" if self.api_base else "",
                mode,
                " after refusals" if self._negotiated else "",
                mode,
            )
