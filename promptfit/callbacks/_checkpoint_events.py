"""The checkpoints one fit saved, as announced through ``on_checkpoint_saved``.

A callback that reacts to checkpoints (the :class:`~promptfit.callbacks.Monitor` uploads the
best one and registers its prompts) learns about them only from the event, never by probing
another callback's attributes: the event gives the path, and the ``checkpoints.json`` manifest
that ``ProgramCheckpoint`` wrote before announcing the save says whether that file is now the
``best`` one and which key it was ranked by. Files of earlier fits in the same directory are
therefore never mistaken for this fit's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__all__ = ["SavedCheckpoints", "is_best", "manifest_entry"]

logger = logging.getLogger("promptfit")


def manifest_entry(path: Path) -> dict[str, Any] | None:
    """The manifest entry that records the checkpoint file ``path``, if any.

    ``ProgramCheckpoint`` keeps its manifest in the fixed part of its filepath template, an
    ancestor of every file it saves; the nearest ancestor whose manifest lists the file wins.
    """
    from promptfit.checkpoints import read_manifest
    from promptfit.checkpoints.manifest import MANIFEST_NAME

    saved = path.resolve()
    for directory in saved.parents:
        if not (directory / MANIFEST_NAME).is_file():
            continue
        try:
            manifest = read_manifest(directory)
        except Exception:  # a corrupt manifest is ProgramCheckpoint's to report
            logger.debug("Could not read %s.", directory / MANIFEST_NAME, exc_info=True)
            continue
        entry = manifest.get(saved.relative_to(directory).as_posix())
        if entry is not None:
            return entry
    return None


def is_best(entry: dict[str, Any] | None) -> bool:
    return entry is not None and "best" in entry.get("tags", [])


class SavedCheckpoints:
    """The saves of one fit, in order, each with its manifest entry at save time."""

    def __init__(self) -> None:
        self.saves: list[tuple[Path, dict[str, Any] | None]] = []

    def record(self, path: str | Path) -> dict[str, Any] | None:
        """Remember a save announced by ``on_checkpoint_saved``; returns its manifest entry
        (tagged ``best`` when the save is a new best)."""
        entry = manifest_entry(Path(path))
        self.saves.append((Path(path), entry))
        return entry

    def monitored_key(self) -> str | None:
        """The key the latest save was ranked by (``None`` without a save)."""
        for _, entry in reversed(self.saves):
            if entry is not None and isinstance(entry.get("monitor"), str):
                return str(entry["monitor"])
        return None

    def best(self) -> Path | None:
        """The latest saved file whose manifest entry is tagged ``best`` *now* (a later save
        to the same path may have taken the tag away), if it still exists."""
        for path in dict.fromkeys(reversed([p for p, _ in self.saves])):
            if is_best(manifest_entry(path)) and path.exists():
                return path
        return None
