"""What every callback that writes a log file does when the file cannot be written.

A log is there to help: a full disk, a revoked permission or a vanished network mount must not
end a training run that has already spent money. :class:`LogWriteGuard` runs a write, turns an
``OSError`` into ONE warning per outage (naming the file, the error and what happens to the
data) and tells the caller whether it worked, so the caller can keep what it could not write
and try again later.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

__all__ = ["LogWriteGuard"]

logger = logging.getLogger("promptfit")


class LogWriteGuard:
    """Run writes to one log file; failures warn once and are reported, never raised.

    Args:
        owner: The callback's name, for the warning.
        path: The file, for the warning.
    """

    def __init__(self, owner: str, path: Path) -> None:
        self.owner = owner
        self.path = path
        self.failing = False

    def attempt(self, write: Callable[[], None]) -> bool:
        """Run ``write``; return whether it succeeded."""
        try:
            write()
        except OSError as error:
            if not self.failing:
                warnings.warn(
                    f"{self.owner} could not write {self.path} ({type(error).__name__}: "
                    f"{error}). Training continues; the unwritten entries are kept in memory "
                    "and written at the next attempt that succeeds (they are lost if the "
                    "process ends first).",
                    RuntimeWarning,
                    stacklevel=3,
                )
            self.failing = True
            return False
        if self.failing:
            logger.info("%s: %s is writable again; pending entries written.", self.owner, self.path)
        self.failing = False
        return True

    def report_lost(self, what: str) -> None:
        """Warn that ``what`` (e.g. "2 row(s) (epochs [0, 1])") never reached the file."""
        warnings.warn(
            f"{self.owner}: {what} could not be written to {self.path} and are lost.",
            RuntimeWarning,
            stacklevel=3,
        )
