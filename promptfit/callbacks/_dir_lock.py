"""An OS-level lock on a run directory, so two processes never resume the same backup.

Two fits resuming one ``BackupAndRestore`` directory both pay every LM call, interleave their
CSV rows and overwrite each other's backups and manifest entries. The second one must fail at
once instead. ``fcntl.flock`` is used because the kernel releases it when its holder dies, even
by SIGKILL: a crashed run never leaves a stale lock to clean up by hand. The lock file holds
the holder's pid, host and start time, only to name it in the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from promptfit.errors import BackupLockedError, CheckpointError

try:  # POSIX; elsewhere the lock is a no-op (documented)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "DirectoryLock"]

LOCK_NAME = ".promptfit.lock"


class DirectoryLock:
    """An exclusive, non-blocking lock on ``directory`` (held through an open descriptor)."""

    def __init__(self, directory: str | os.PathLike[str], owner: str) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.owner = owner
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise at once.

        Raises:
            BackupLockedError: another process (or another fit in this one) holds it; the
                message names the holder's pid and host.
        """
        if self._fd is not None or fcntl is None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CheckpointError(
                f"{self.owner}: cannot create the directory {self.directory} ({error.strerror}). "
                "Pass a backup_dir you can write to."
            ) from None
        key = os.path.realpath(self.directory)
        _release_stale_holder(key)
        for _attempt in range(5):
            # O_NOFOLLOW: a symlink planted as the lock file must not make us write elsewhere.
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
            try:
                fd = os.open(self.path, flags, 0o644)
            except OSError as error:
                raise CheckpointError(self._cannot_open(error)) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise BackupLockedError(
                    f"{self.owner}: the directory {self.directory} is in use by another fit "
                    f"({holder}). Two runs resuming one backup would pay every LM call twice "
                    "and corrupt each other's files. Wait for that run to finish, stop it, or "
                    "use another backup_dir (the lock is released as soon as its process "
                    "ends, even if it is killed)."
                ) from None
            except BaseException:
                os.close(fd)
                raise
            # The holder we waited on may have deleted the file before we locked it: a lock on
            # an unlinked inode protects nothing, so check that the path is still our file.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                _write_holder(fd)
                _holders[key] = (self, _current_task())
                return
            os.close(fd)
        raise BackupLockedError(  # pragma: no cover - needs a pathological race
            f"{self.owner}: could not lock {self.directory}; another process keeps replacing "
            f"{self.path}."
        )

    def _cannot_open(self, error: OSError) -> str:
        """Why the lock file cannot be opened, and what to do (a raw OSError said neither)."""
        if self.path.is_symlink():
            return (
                f"{self.owner}: {self.path} is a symbolic link, which promptfit never follows "
                "(it could make the run write elsewhere). Delete it, or use another backup_dir."
            )
        return (
            f"{self.owner}: cannot open the lock file {self.path} ({error.strerror}). Make "
            f"{self.directory} writable, or use another backup_dir."
        )

    def release(self, *, remove: bool = False) -> None:
        """Release the lock; ``remove`` also deletes the lock file (while still holding it)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        for key, (lock, _task) in list(_holders.items()):
            if lock is self:
                del _holders[key]
        if remove:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(fd)  # closing the descriptor releases the flock

    def __del__(self) -> None:  # a forgotten lock must not outlive its object
        with contextlib.suppress(Exception):
            self.release()


# Locks held in this process, by real directory path, with the asyncio task of the fit that
# took them. A fit whose on_train_end never ran (an earlier callback raised there, as an
# in-process "crash" does) would otherwise keep its descriptor, and so the lock, for as long as
# the process lives; a process that really crashed loses it with its descriptors.
_holders: dict[str, tuple[DirectoryLock, Any]] = {}


def _current_task() -> Any:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _release_stale_holder(key: str) -> None:
    """Drop this process's lock on ``key`` if the fit that took it is no longer running."""
    held = _holders.get(key)
    if held is None:
        return
    lock, task = held
    if task is not None and not task.done() and task is not _current_task():
        return  # a live fit: flock refuses the newcomer below, naming this process
    # The holder's task ended, or it is ours (fits in one task run one after the other).
    lock.release()


def _write_holder(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    data = (json.dumps(info) + "\n").encode()
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)


def _read_holder(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0)
        info: Any = json.loads(raw.decode("utf-8"))
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        return f"pid {int(info['pid'])} on host {str(info['host'])[:100]}, since {since}"
    except Exception:
        return "holder unknown: its lock file is still being written"
