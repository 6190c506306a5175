"""One fit per backup directory (issue 11, item 3), with real processes.

The second process resuming the same ``BackupAndRestore`` directory must fail at once, naming
the holder, and leave the first run's files intact; a killed holder releases the lock.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import promptfit as pf
from promptfit.callbacks.backup_and_restore import BackupAndRestore
from promptfit.errors import BackupLockedError, CheckpointError
from promptfit.testing import FakeLLMServer
from tests.test_backup_and_restore import ForkServer

LOCK = ".promptfit.lock"


@pytest.fixture()
def forks() -> Iterator[ForkServer]:
    """fit_script.py's fork server: each run is a real process, forked in milliseconds."""
    server = ForkServer()
    yield server
    server.close()


def _spawn(forks: ForkServer, url: str, workdir: Path, latency_ms: int, name: str) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [url, str(workdir), "--epochs", "6", "--latency-ms", str(latency_ms)]
    return forks.spawn(argv, workdir / f"{name}.stderr")


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


def _holder_pid(workdir: Path) -> int | None:
    try:
        return int(json.loads((workdir / "backup" / LOCK).read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def test_a_second_process_on_the_same_backup_fails_at_once(
    llm_server: FakeLLMServer, forks: ForkServer, tmp_path: Path
) -> None:
    url = llm_server.base_url
    first = _spawn(forks, url, tmp_path, 150, "first")
    _wait_for(lambda: _holder_pid(tmp_path) == first, "the first run to take the lock")
    second = _spawn(forks, url, tmp_path, 150, "second")
    assert forks.wait(second) != 0
    err = (tmp_path / "second.stderr").read_text()
    assert "BackupLockedError" in err and f"pid {first}" in err, err[-2000:]
    assert first not in forks.exits, "the second run must fail while the first still runs"
    assert forks.wait(first) == 0, (tmp_path / "first.stderr").read_text()[-2000:]
    with (tmp_path / "log.csv").open() as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle)]
    result = json.loads((tmp_path / "result.json").read_text())
    assert epochs == result["epochs"] == list(range(len(epochs))), "rows interleaved"
    # A finished run deletes its backup, lock file included.
    assert not (tmp_path / "backup").exists()


def test_a_killed_holder_releases_the_lock(
    llm_server: FakeLLMServer, forks: ForkServer, tmp_path: Path
) -> None:
    url = llm_server.base_url
    first = _spawn(forks, url, tmp_path, 60, "first")
    _wait_for(lambda: (tmp_path / "backup" / "backup.json").exists(), "the first backup")
    os.kill(first, signal.SIGKILL)
    assert forks.wait(first) == -signal.SIGKILL
    assert _holder_pid(tmp_path) == first  # the stale file stays; the lock does not
    # The same model string (the test server's latency is part of it), or the resume is
    # refused as another run's.
    second = _spawn(forks, url, tmp_path, 60, "second")
    assert forks.wait(second) == 0, (tmp_path / "second.stderr").read_text()[-2000:]
    assert (tmp_path / "result.json").exists()


def test_two_fits_in_one_process_cannot_share_a_backup_dir(
    make_lm: object, tmp_path: Path, calc_program: object
) -> None:
    async def run() -> None:
        first = await calc_program()  # type: ignore[operator]
        second = await calc_program()  # type: ignore[operator]
        x = [{"question": f"What is {i} + 1?"} for i in range(4)]
        y = [{"answer": str(i + 1)} for i in range(4)]
        await asyncio.gather(
            first.fit(x, y, epochs=2, verbose=0, callbacks=[BackupAndRestore(tmp_path / "b")]),
            second.fit(x, y, epochs=2, verbose=0, callbacks=[BackupAndRestore(tmp_path / "b")]),
        )

    with pytest.raises(BackupLockedError, match=f"pid {os.getpid()}"):
        asyncio.run(run())
    assert issubclass(BackupLockedError, CheckpointError)
    assert isinstance(pf.errors.BackupLockedError("x"), pf.errors.PromptfitError)


def test_a_symlink_planted_as_the_lock_file_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    backup_dir = tmp_path / "b"
    backup_dir.mkdir()
    (backup_dir / LOCK).symlink_to(victim)
    from promptfit.callbacks._dir_lock import DirectoryLock

    with pytest.raises(CheckpointError, match=r"symbolic link.*Delete it"):
        DirectoryLock(backup_dir, "test").acquire()
    assert victim.read_text() == "precious"


def test_a_backup_dir_that_cannot_be_created_is_a_checkpoint_error(tmp_path: Path) -> None:
    """A raw OSError before; now a typed error naming the directory (as root too: nothing can
    create a directory under a regular file)."""
    from promptfit.callbacks._dir_lock import DirectoryLock

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="cannot create the directory"):
        DirectoryLock(blocker / "backup", "BackupAndRestore").acquire()
