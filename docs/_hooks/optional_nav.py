"""mkdocs hook: drop nav entries for optional pages that do not exist (yet).

Some pages are written by other people on their own schedule (``benchmarks.md``). Listing a
missing page in the nav would fail ``mkdocs build --strict``; leaving it out would hide it
once it exists. This hook keeps it in the nav exactly when the file is there. Only the pages in
``OPTIONAL`` are treated this way: any other missing page still fails the build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

OPTIONAL = frozenset({"benchmarks.md"})


def _prune(nav: Any, docs_dir: Path) -> Any:
    if isinstance(nav, list):
        kept = [_prune(item, docs_dir) for item in nav]
        return [item for item in kept if item is not None]
    if isinstance(nav, dict):
        pruned = {title: _prune(value, docs_dir) for title, value in nav.items()}
        return {t: v for t, v in pruned.items() if v is not None} or None
    if isinstance(nav, str) and nav in OPTIONAL and not (docs_dir / nav).is_file():
        return None
    return nav


def on_config(config: Any) -> Any:
    if config.get("nav"):
        config["nav"] = _prune(config["nav"], Path(config["docs_dir"]))
    return config
