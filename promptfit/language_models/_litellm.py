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

__all__ = ["authenticating_provider", "get_litellm", "is_loaded"]

_configured: ModuleType | None = None

# litellm's own list (``litellm.constants.PROVIDERS_THAT_AUTHENTICATE_ON_PROVIDER_INFO``) when
# it has one; these two otherwise.
_AUTHENTICATING_FALLBACK = frozenset({"github_copilot", "chatgpt"})


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


def authenticating_provider(model: str, custom_llm_provider: str | None = None) -> str | None:
    """The provider ``model`` names if merely resolving it would log in over the network.

    For ``github_copilot/...`` and ``chatgpt/...``, ``litellm.get_llm_provider`` runs an OAuth
    device flow: it calls the provider's login endpoint and can wait minutes for a human to
    confirm a code. A route check (``LanguageModel(...)`` construction, safe mode judging a
    file) must never do that, so it asks this first and does not resolve such a model.
    """
    constants = getattr(get_litellm(), "constants", None)
    names = getattr(constants, "PROVIDERS_THAT_AUTHENTICATE_ON_PROVIDER_INFO", None)
    authenticating = frozenset(names) if names else _AUTHENTICATING_FALLBACK
    declared = custom_llm_provider or (model.split("/", 1)[0] if "/" in model else None)
    if isinstance(declared, str) and declared.strip().lower() in authenticating:
        return declared.strip().lower()
    return None


def is_loaded() -> bool:
    """Whether litellm is imported (if not, no exception can be one of its classes)."""
    return "litellm" in sys.modules


def __getattr__(name: str) -> Any:
    if name == "litellm":
        return get_litellm()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
