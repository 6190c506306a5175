"""``python -m promptfit.testing.fake_server``: serve until SIGTERM/SIGINT (see ``main``).

:class:`~promptfit.testing.FakeLLMServer` starts this file directly (``python <path>``), not
with ``-m``: the child then imports this package as the top-level ``fake_server`` and never
imports promptfit and its heavy dependencies, so a server is up in a fraction of a second.
That is why every module of the package imports its siblings relatively.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__:  # python -m promptfit.testing.fake_server
    from .app import main
else:  # python .../fake_server/__main__.py
    here = Path(__file__).resolve().parent
    # A script's own directory is sys.path[0]; the package's parent replaces it, so no module
    # of this package can shadow a top-level one.
    sys.path[0] = str(here.parent)
    from fake_server.app import main  # type: ignore[no-redef]

if __name__ == "__main__":
    sys.exit(main())
