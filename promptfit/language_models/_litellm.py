"""litellm, imported on first use and configured for offline, quiet, library use.

Importing litellm takes seconds (most of ``import promptfit`` before this was lazy), and a
program talking to its own OpenAI-compatible server over the lean HTTP transport never needs
it. So nothing imports litellm at module level: :func:`get_litellm` does, the first time a
call, a route check or the embedded ``local/`` model needs it. ``from
promptfit.language_models._litellm import litellm`` still works (a module ``__getattr__``).

litellm downloads its model price map at import time unless told otherwise; promptfit must work
with no network, so the bundled map is used. Its telemetry and debug banners are turned off.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import Any

__all__ = ["get_litellm", "is_loaded"]

_configured: ModuleType | None = None


def get_litellm() -> ModuleType:
    """The litellm module, imported and configured once per process."""
    global _configured
    if _configured is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        litellm.telemetry = False
        litellm.suppress_debug_info = True
        litellm.drop_params = False
        _configured = litellm
    return _configured


def is_loaded() -> bool:
    """Whether litellm is imported (if not, no exception can be one of its classes)."""
    return "litellm" in sys.modules


def __getattr__(name: str) -> Any:
    if name == "litellm":
        return get_litellm()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
