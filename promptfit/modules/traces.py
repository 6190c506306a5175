"""Per-example records of what each generator received and produced.

Few-shot optimizers need the inputs and outputs of every generator inside a program, not just
the program's final output. While ``collect_traces`` is active (one context per example task,
so concurrent examples never mix), each generator appends a :class:`ModuleTrace`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

__all__ = ["ModuleTrace", "collect_traces", "record_trace"]

_TRACES: ContextVar[list[ModuleTrace] | None] = ContextVar("promptfit_traces", default=None)


@dataclass(frozen=True, slots=True)
class ModuleTrace:
    module: str
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None


@contextlib.contextmanager
def collect_traces() -> Iterator[list[ModuleTrace]]:
    records: list[ModuleTrace] = []
    token = _TRACES.set(records)
    try:
        yield records
    finally:
        _TRACES.reset(token)


def record_trace(module: str, inputs: dict[str, Any], outputs: dict[str, Any] | None) -> None:
    records = _TRACES.get()
    if records is not None:
        records.append(ModuleTrace(module, inputs, outputs))
