"""Usage counters kept per language model."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["Usage"]


@dataclass
class Usage:
    """Counters of what a language model has been asked and what it cost.

    ``calls`` counts every request sent to the provider: retries, failed attempts and requests
    refused during structured-output negotiation included, cache hits excluded.
    ``failed_calls`` counts generations that still failed after every retry; ``retries`` the
    retries made. A ``fit``/``evaluate`` keeps its own copy of these counters too (see
    :mod:`promptfit.language_models.scope`).
    """

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    cache_hits: int = 0
    failed_calls: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, **deltas: float) -> None:
        with self._lock:
            for key, delta in deltas.items():
                setattr(self, key, getattr(self, key) + delta)

    def as_dict(self) -> dict[str, Any]:
        data = self.state_dict()
        data["tokens"] = self.tokens
        return data

    def state_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self._lock:
            for f in fields(self):
                if not f.name.startswith("_") and f.name in state:
                    setattr(self, f.name, type(getattr(self, f.name))(state[f.name]))

    def reset(self) -> None:
        self.load_state_dict(Usage().state_dict())

    @staticmethod
    def total(usages: list[Usage]) -> Usage:
        out = Usage()
        for usage in usages:
            out.add(**usage.state_dict())
        return out
