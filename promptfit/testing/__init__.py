"""Test helpers for promptfit: a deterministic OpenAI-compatible fake LLM server.

``FakeLLMServer`` is loaded lazily so that ``python -m promptfit.testing.fake_server``
does not import the module twice (runpy warns when a package pre-imports the module
it is about to run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from promptfit.testing.fake_server import FakeLLMServer

__all__ = ["FakeLLMServer"]


def __getattr__(name: str) -> Any:
    """Resolve ``FakeLLMServer`` on first access (PEP 562)."""
    if name == "FakeLLMServer":
        from promptfit.testing.fake_server import FakeLLMServer

        return FakeLLMServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
