"""A private staging folder for a run's artifacts: scrubbed copies, never the user's files.

Artifacts (the program JSON, the fit configuration, the best checkpoint) are uploaded from a
copy in a temporary folder owned by one fit, after promptfit's one credential scrubber
(:func:`promptfit.saving.secrets.scrub_text`) has removed every known API key, key-shaped
value and URL credential from the text files in it. Why copies: the user's checkpoint must stay
byte-for-byte what ``ProgramCheckpoint`` wrote, and a file that changes while it uploads would
be sent half old, half new.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from promptfit.saving.secrets import register_secret, scrub_text

__all__ = ["StagingArea"]

# Only text formats are scrubbed; other files (none promptfit writes) are copied as they are.
TEXT_SUFFIXES = (".json", ".jsonl", ".txt", ".yaml", ".yml", ".csv")


class StagingArea:
    """The temporary folder of one fit's uploads (created on first use, removed by
    :meth:`cleanup`).

    Args:
        secrets: Exact secrets to remove (the API keys of the program's language models); they
            join the scrubber's process-wide list, which also covers credential-named
            environment variables.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        for secret in secrets:
            register_secret(secret)
        self._root: Path | None = None

    @property
    def root(self) -> Path:
        """The folder (created on first access)."""
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="promptfit-monitor-"))
        return self._root

    def stage(self, local: Path) -> Path:
        """A scrubbed copy of ``local`` (file or folder) inside the staging folder.

        A path already inside the folder is scrubbed in place (it is ours).

        Raises:
            OSError: ``local`` cannot be read (the caller skips that artifact).
        """
        root = self.root
        if local.is_relative_to(root):
            target = local
        else:
            target = root / "staged" / local.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if local.is_dir():
                shutil.copytree(local, target, dirs_exist_ok=True)
            else:
                shutil.copy2(local, target)
        files = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()]
        for file in files:
            scrub_file(file)
        return target

    def cleanup(self) -> None:
        """Remove the folder and everything in it."""
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)


def scrub_file(file: Path) -> None:
    """Remove credentials from a text file in place (other files are left alone)."""
    if file.suffix.lower() not in TEXT_SUFFIXES:
        return
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return
    clean = scrub_text(text)
    if clean != text:
        file.write_text(clean, encoding="utf-8")
