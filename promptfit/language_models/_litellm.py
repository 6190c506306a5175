"""Import litellm configured for offline, quiet, library use.

litellm downloads its model price map at import time unless told otherwise; promptfit must work
with no network, so the bundled map is used. Its telemetry and debug banners are turned off.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

litellm.telemetry = False
litellm.suppress_debug_info = True
litellm.drop_params = False

__all__ = ["litellm"]
