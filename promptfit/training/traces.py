"""Per-example records of what each generator received and produced (kept importable here).

The records are written by generators, so they live in :mod:`promptfit.modules.traces`; the
training loop and optimizers collect them. This module re-exports them for code that imports
them from ``promptfit.training.traces``; importing downwards keeps ``modules/`` from importing
``training/``.
"""

from __future__ import annotations

from promptfit.modules.traces import _TRACES, ModuleTrace, collect_traces, record_trace

__all__ = ["_TRACES", "ModuleTrace", "collect_traces", "record_trace"]
