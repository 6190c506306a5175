"""A fit SIGKILLed at random moments, again and again, resumes to the uninterrupted history.

Why this test, next to the ones in ``test_backup_and_restore.py``: those kill at moments chosen
by looking at the backup (right after an epoch's backup, mid-epoch after a batch's backup, while
an unbacked reply is in the cache). A real crash picks no moment: it can land while a reply is
half-stored in the SQLite response cache, while a backup is being written, between a paid reply
and its backup, or before the first backup. Here each run of a lineage is killed after a random
delay (drawn from a seeded generator) until one finishes, and the final history must equal the
uninterrupted run's, every column: rewards, metrics and usage (``lm_calls``, ``tokens``,
``cost``, ``failed_calls`` and their ``val_`` twins), as issue 8 asks.

The seed is fresh for every run of the suite and is printed in any failure; set
``PROMPTFIT_KILL_SEED`` to replay a failing sequence of kill moments.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from promptfit.testing import FakeLLMServer
from tests.test_backup_and_restore import (
    EVERY_COLUMN,
    ForkServer,
    _backup_state,
    _csv_epochs,
)

MAX_KILLS = 6
"""Kills per lineage; a lineage ends earlier when a run finishes before its kill comes."""


@pytest.fixture()
def fork_server() -> Iterator[ForkServer]:
    server = ForkServer()
    yield server
    server.close()


def _seed() -> int:
    given = os.environ.get("PROMPTFIT_KILL_SEED")
    return int(given) if given else random.SystemRandom().randrange(2**32)


def _kill_after(server: ForkServer, pid: int, delay: float) -> bool:
    """SIGKILL ``pid`` after ``delay`` seconds unless it ended; True if the kill ended it."""
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and pid not in server.exits:
        time.sleep(0.002)
    if pid not in server.exits:
        # A child that exits right now is a zombie until the server reaps it: the kill is
        # harmless then, and wait() reports its real exit status (0), not the signal.
        os.kill(pid, signal.SIGKILL)
    code = server.wait(pid)
    assert code in (0, -signal.SIGKILL), f"the run failed on its own (exit code {code})"
    return code == -signal.SIGKILL


def _lineage(
    server: ForkServer, rng: random.Random, argv: list[str], workdir: Path, window: float
) -> tuple[list[float], list[str]]:
    """Run ``argv`` until a run finishes, killing each after a delay drawn from ``window``.

    Returns the delays and, for every kill, the backup it left (``epoch:step`` or ``none``).
    """
    delays: list[float] = []
    at: list[str] = []
    for _ in range(MAX_KILLS):
        pid = server.spawn(argv, workdir / "err")
        delay = rng.uniform(0.0, window)
        delays.append(round(delay, 3))
        if not _kill_after(server, pid, delay):
            return delays, at
        backup = _backup_state(workdir / "backup")
        at.append("none" if backup is None else f"{backup['epoch']}:{backup['step']}")
    pid = server.spawn(argv, workdir / "err")
    assert server.wait(pid) == 0, (workdir / "err").read_text()[-3000:]
    return delays, at


@pytest.mark.parametrize("save_freq", ["epoch", "1"])
def test_sigkill_at_random_moments_logs_the_uninterrupted_history(
    llm_server: FakeLLMServer, fork_server: ForkServer, tmp_path: Path, save_freq: str
) -> None:
    seed = _seed()
    rng = random.Random(seed)
    url = llm_server.base_url
    # --keep-backup: a kill after the fit ended but before the script wrote its result must
    # lead back to the finished fit, not to a new one (a new fit of the same program would pay
    # nothing, its replies all cached, and rightly log them as cache hits, not calls).
    args = ["--save-freq", save_freq, "--keep-backup"]
    # The uninterrupted run is a child of the same fork server, so its duration tells how long
    # a run takes there: kill moments spread over all of it, from before the first LM call to
    # after the last backup.
    started = time.monotonic()
    pid = fork_server.spawn([url, str(tmp_path / "reference"), *args], tmp_path / "ref-err")
    assert fork_server.wait(pid) == 0, (tmp_path / "ref-err").read_text()[-3000:]
    duration = time.monotonic() - started
    reference = json.loads((tmp_path / "reference" / "result.json").read_text())

    # A lineage: runs on one work directory, each SIGKILLed after a random delay, until one
    # finishes. On a loaded machine a run can be faster than the calibration run and finish
    # before its first kill; that lineage proves nothing, so a new one aims earlier.
    window = 0.8 * duration
    for attempt in range(8):
        workdir = tmp_path / f"run{attempt}"
        workdir.mkdir()
        delays, at = _lineage(fork_server, rng, [url, str(workdir), *args], workdir, window)
        if at:
            break
        window /= 2
    replay = (
        f"(replay with PROMPTFIT_KILL_SEED={seed}; kill delays {delays} s, "
        f"backups left at epoch:step {at})"
    )
    assert at, f"no run was killed {replay}"
    result = json.loads((workdir / "result.json").read_text())
    assert result["variables"] == reference["variables"], replay
    assert result["optimizer"] == reference["optimizer"], replay
    assert result["epochs"] == reference["epochs"], replay
    every = {key: result["history"][key] for key in EVERY_COLUMN}
    assert every == {key: reference["history"][key] for key in EVERY_COLUMN}, replay
    assert _csv_epochs(workdir / "log.csv") == reference["epochs"], replay


def _paid_replies(workdir: Path) -> int:
    """Replies paid inside a fit and stored in the run's on-disk response cache."""
    path = workdir / "cache" / "responses.sqlite"
    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=5)
    try:
        values = [v for (v,) in db.execute("SELECT value FROM responses")]
    except sqlite3.Error:  # the table is being created
        return 0
    finally:
        db.close()
    return sum(bool(json.loads(v).get("origin")) for v in values)


def test_a_kill_before_the_first_epoch_ends_counts_its_paid_calls_once(
    llm_server: FakeLLMServer, fork_server: ForkServer, tmp_path: Path
) -> None:
    """Killed in epoch 0, with replies paid and no epoch backup yet: the resumed run logs them
    as the calls they were. The fit's run id, under which the cache files its replies, must be
    on disk before the first LM call, or the resumed run (a new run id) logs them as hits."""
    url = llm_server.base_url
    args = ["--latency-ms", "100"]
    pid = fork_server.spawn([url, str(tmp_path / "reference"), *args], tmp_path / "ref-err")
    assert fork_server.wait(pid) == 0, (tmp_path / "ref-err").read_text()[-3000:]
    reference = json.loads((tmp_path / "reference" / "result.json").read_text())

    workdir = tmp_path / "run"
    workdir.mkdir()
    pid = fork_server.spawn([url, str(workdir), *args], workdir / "err")
    deadline = time.monotonic() + 120
    while _paid_replies(workdir) == 0:
        assert pid not in fork_server.exits, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no reply reached the cache in 120 s"
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    assert fork_server.wait(pid) == -signal.SIGKILL
    backup = _backup_state(workdir / "backup")
    assert backup is None or (backup["epoch"], backup["step"]) == (0, 0), backup
    pid = fork_server.spawn([url, str(workdir), *args], workdir / "err")
    assert fork_server.wait(pid) == 0, (workdir / "err").read_text()[-3000:]
    result = json.loads((workdir / "result.json").read_text())
    every = {key: result["history"][key] for key in EVERY_COLUMN}
    assert every == {key: reference["history"][key] for key in EVERY_COLUMN}
    assert result["optimizer"] == reference["optimizer"]
