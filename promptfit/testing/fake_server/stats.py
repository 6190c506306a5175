"""Request counters and per-request attempt memory of one server process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Stats:
    requests: int = 0
    by_model: dict[str, int] = field(default_factory=dict)
    injected_errors: int = 0
    malformed: int = 0
    with_json_schema: int = 0
    json_schema_rejected: int = 0
    format_rejected: int = 0
    by_format: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_model": dict(self.by_model),
            "injected_errors": self.injected_errors,
            "malformed": self.malformed,
            "with_json_schema": self.with_json_schema,
            "json_schema_rejected": self.json_schema_rejected,
            "format_rejected": self.format_rejected,
            "by_format": dict(self.by_format),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }


@dataclass
class _State:
    stats: _Stats = field(default_factory=_Stats)
    # (model, sha256 of canonical body) -> number of attempts seen so far
    attempts: dict[tuple[str, str], int] = field(default_factory=dict)

    def reset(self, model: str | None) -> None:
        if model is None:
            in_flight = self.stats.in_flight
            self.stats = _Stats(in_flight=in_flight)
            self.attempts.clear()
            return
        self.stats.by_model.pop(model, None)
        for key in [k for k in self.attempts if k[0] == model]:
            del self.attempts[key]
