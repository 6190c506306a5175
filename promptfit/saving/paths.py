"""Paths read from files must stay inside their directory, symlinks included.

A manifest or a backup names files relative to a run's directory, and promptfit reads, tags
and (with ``keep_top_k``) deletes those files. A lexical check (no ``..``, not absolute) is not
enough: ``sub/victim.json`` where ``sub`` is a symlink to ``/home/you`` passes it and would
delete ``/home/you/victim.json``. :func:`contained_path` resolves real paths (every symlink on
the way) and refuses anything whose real location is not under the real directory.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = ["PathEscapeError", "contained_path", "is_safe_relative"]


class PathEscapeError(ValueError):
    """A path from a file leads outside its directory; ``str()`` says where it leads."""


def is_safe_relative(rel: Any) -> bool:
    """Lexically: a non-empty relative POSIX path without ``..``, NUL or a drive."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        return False
    pure = PurePosixPath(rel)
    return not (pure.is_absolute() or ".." in pure.parts or Path(rel).is_absolute())


def contained_path(
    directory: str | os.PathLike[str], rel: Any, *, follow_last: bool = True
) -> Path:
    """``directory / rel``, after checking that its real location is inside ``directory``.

    Args:
        directory: The run's directory (may itself be a symlink: its real path is the base).
        rel: The relative path read from a file.
        follow_last: Resolve the last component too (for reads). ``False`` for deletes, where
            ``unlink`` removes a symlink itself, never its target, so only the parent
            directories must be real and inside.

    Raises:
        PathEscapeError: ``rel`` is not a safe relative path, or its real location (parents,
            and the file itself when ``follow_last``) is outside ``directory``.
    """
    if not is_safe_relative(rel):
        raise PathEscapeError(f"{rel!r:.200} is not a relative path inside the directory")
    base = Path(os.path.realpath(directory))
    target = Path(directory) / rel
    real = Path(os.path.realpath(target if follow_last else target.parent))
    if real != base and base not in real.parents:
        raise PathEscapeError(f"{rel!r} leads to {str(real)!r}, outside {str(base)!r}")
    return target
