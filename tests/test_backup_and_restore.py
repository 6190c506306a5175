"""BackupAndRestore: a crashed fit resumes exactly where it stopped, or refuses clearly.

Why these tests: the whole point of the callback is that hours of paid LM calls survive a
crash. So the central test kills real training processes with SIGKILL (no cleanup code runs)
at several moments -- at an epoch boundary and mid-epoch, twice in a row -- and checks that the
resumed run ends with the same variables, optimizer state and reward/metric history as an
uninterrupted run, usage columns (``lm_calls``, ``tokens``, ``cost``...) included: the replies a
killed process paid for after its last backup are in the on-disk response cache, so the resumed
run pays for none of them again and counts them exactly as the uninterrupted run did.

The other tests use in-process crashes (a callback that raises) because they are fast and
deterministic: mismatched runs are refused with the difference named, corrupt backups fail
with the file named (or fall back to the previous backup with ``double_checkpoint``), the
backup is deleted only after a normal end, and integer ``save_freq`` resumes mid-epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import promptfit as pf
from promptfit.callbacks.backup_and_restore import BackupAndRestore
from promptfit.callbacks.callback import Callback
from promptfit.callbacks.csv_logger import CSVLogger
from promptfit.errors import BackupMismatchError, CheckpointError, ConfigurationError
from promptfit.testing import FakeLLMServer
from tests.conftest import Answer, Query, arithmetic_data

SCRIPT = Path(__file__).parent / "_scripts" / "fit_script.py"
COMPARED = ("reward", "accuracy", "val_reward", "val_accuracy")
USAGE = ("lm_calls", "tokens", "cost", "failed_calls")
EVERY_COLUMN = (*COMPARED, *USAGE, *(f"val_{key}" for key in USAGE))


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("promptfit_fit_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fit_script = _load_script()


# --------------------------------------------------------------------------------------
# helpers for the in-process tests
# --------------------------------------------------------------------------------------


class Boom(RuntimeError):
    """The simulated crash."""


class CrashAt(Callback):
    """Raise at the end of a given epoch or global batch (listed in every run, armed once).

    It runs before BackupAndRestore (fit always runs that one last), so the crash happens
    after the previous backup and before the one of the crashing step: a real crash window.
    """

    def __init__(self, epoch: int | None = None, global_step: int | None = None) -> None:
        super().__init__()
        self.epoch = epoch
        self.global_step = global_step
        self.armed = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.armed and epoch == self.epoch:
            raise Boom(f"crash at the end of epoch {epoch}")

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        state = self.context
        if self.armed and state is not None and state.global_step == self.global_step:
            raise Boom(f"crash after global batch {self.global_step}")


class RunTag(Callback):
    """Stands in for a tracking callback (e.g. an MLflow monitor): a run id plus a counter."""

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.epochs_seen: list[int] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epochs_seen.append(epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "epochs_seen": self.epochs_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state["run_id"]
        self.epochs_seen = list(state["epochs_seen"])


class StopAfter(Callback):
    """Ask fit to stop at the end of an epoch (like EarlyStopping, but predictable)."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch == self.epoch:
            self.program.stop_training = True


def _early_stopping() -> Callback:
    return fit_script.early_stopping()


@pytest.fixture()
def build(llm_server: FakeLLMServer) -> Callable[..., Any]:
    """An async factory of the arithmetic program (same model name in every run of a test)."""

    async def factory(name: str = "answer", tag: str = "bar") -> pf.Program:
        lm = pf.LanguageModel(
            model=FakeLLMServer.model("arith", min_examples=2, tag=tag),
            api_base=llm_server.base_url,
            api_key="sk-fake",
        )
        inputs = pf.Input(data_model=Query)
        outputs = await pf.Generator(
            data_model=Answer, language_model=lm, instructions="Answer with a number.", name=name
        )(inputs)
        program = pf.Program(inputs=inputs, outputs=outputs, name="calc")
        program.compile(
            reward=pf.rewards.ExactMatch(in_mask=["answer"]),
            optimizer=pf.optimizers.RandomFewShot(k=2),
            metrics=[pf.metrics.Accuracy(in_mask=["answer"])],
        )
        return program

    return factory


def _fit(
    program: pf.Program,
    callbacks: list[Callback],
    *,
    epochs: int = 3,
    batch_size: int = 2,
    data: tuple[Any, Any] | None = None,
) -> Any:
    x, y = data or arithmetic_data(8)
    return program.fit(
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        validation_split=0.25,
        seed=5,
        verbose=0,
        callbacks=callbacks,
    )


def _backup_state(backup_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((backup_dir / "backup.json").read_text())["fit_state"]
    except FileNotFoundError:
        return None


def _columns(history: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return {key: history[key] for key in COMPARED}


# --------------------------------------------------------------------------------------
# crash and resume in real processes killed with SIGKILL
# --------------------------------------------------------------------------------------


class ForkServer:
    """``fit_script.py --fork-server``: pays ``import promptfit`` once, forks a process per run.

    Each run is a real process of its own, killed with a real SIGKILL; only the slow import is
    shared. The server starts importing while the test computes its reference run.
    """

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--fork-server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.exits: dict[int, int] = {}
        self.started: list[int] = []
        threading.Thread(target=self._read, daemon=True).start()
        self._ready = False

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            message = json.loads(line)
            if "exit" in message:
                self.exits[message["exit"]] = message["code"]
            else:
                self.messages.put(message)

    def spawn(self, argv: list[str], stderr: Path) -> int:
        assert self.proc.stdin is not None
        if not self._ready:
            assert self.messages.get(timeout=120) == {"ready": True}
            self._ready = True
        request = {"argv": argv, "stderr": str(stderr)}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        pid = int(self.messages.get(timeout=30)["pid"])
        self.started.append(pid)
        return pid

    def wait(self, pid: int, timeout: float = 120.0) -> int:
        deadline = time.monotonic() + timeout
        while pid not in self.exits:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"training process {pid} did not finish in {timeout} s")
            time.sleep(0.01)
        return self.exits[pid]

    def close(self) -> None:
        # Every child has been reaped by now; the server holds no state worth a slow,
        # orderly interpreter shutdown.
        for pid in self.started:
            if pid not in self.exits:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.kill()
        self.proc.wait()


class Run:
    """One run of ``fit_script.py`` on a work directory, to be killed when a predicate holds."""

    def __init__(self, server: ForkServer, base_url: str, workdir: Path, *args: str) -> None:
        self.server = server
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.pid = server.spawn([base_url, str(workdir), *args], workdir / "stderr.txt")
        self.killed_at: dict[str, Any] | None = None

    def stderr(self) -> str:
        return (self.workdir / "stderr.txt").read_text()[-3000:]

    def poll_kill(self, predicate: Callable[[dict[str, Any]], bool]) -> bool:
        """SIGKILL the run if its backup satisfies ``predicate``; True once it is killed."""
        if self.killed_at is not None:
            return True
        if self.pid in self.server.exits:
            pytest.fail(
                f"the training process ended (code {self.server.exits[self.pid]}) before it "
                f"could be killed; stderr:\n{self.stderr()}"
            )
        state = _backup_state(self.workdir / "backup")
        if state is None or not predicate(state):
            return False
        os.kill(self.pid, signal.SIGKILL)
        assert self.server.wait(self.pid) == -signal.SIGKILL
        self.killed_at = state
        return True

    def finish(self) -> None:
        code = self.server.wait(self.pid)
        assert code == 0, f"the resumed run failed (code {code}):\n{self.stderr()}"


def _kill_when(runs: list[tuple[Run, Callable[[dict[str, Any]], bool]]]) -> None:
    deadline = time.monotonic() + 120
    pending = list(runs)
    while pending:
        pending = [(run, pred) for run, pred in pending if not run.poll_kill(pred)]
        if pending and time.monotonic() > deadline:
            for run, _ in pending:
                os.kill(run.pid, signal.SIGKILL)
            pytest.fail("timed out waiting for the moment to kill the training process")
        time.sleep(0.003)


def _global(state: dict[str, Any], steps: int) -> int:
    return state["epoch"] * steps + state["step"]


def _csv_epochs(path: Path) -> list[int]:
    lines = path.read_text().splitlines()
    assert lines[0].startswith("epoch,")
    return [int(line.split(",", 1)[0]) for line in lines[1:]]


@pytest.fixture()
def fork_server() -> Iterator[ForkServer]:
    server = ForkServer()
    yield server
    server.close()


def test_sigkill_at_any_moment_resumes_to_the_uninterrupted_result(
    llm_server: FakeLLMServer, fork_server: ForkServer, tmp_path: Path
) -> None:
    url = llm_server.base_url
    reference = asyncio.run(fit_script.run(url, tmp_path / "reference", save_freq=1))
    n_epochs = len(reference["epochs"])
    # EarlyStopping (patience 2) ends the 6-epoch run early: the resumes below must keep its
    # patience counter to stop at the same epoch.
    assert n_epochs >= 4
    assert reference["stopped_epoch"] == n_epochs - 1 < 5
    steps = 2  # 4 training examples, batch_size 2

    # Two lineages run side by side. "by_epoch" (a backup per epoch) is killed as soon as its
    # first backup appears. "by_batch" (a backup per batch) is killed mid-epoch, resumed, and
    # killed mid-epoch again after it has made progress of its own. Both are then resumed to
    # the end in new processes.
    by_epoch = Run(fork_server, url, tmp_path / "by_epoch")
    by_batch = Run(fork_server, url, tmp_path / "by_batch", "--save-freq", "1")
    _kill_when(
        [
            (by_epoch, lambda s: True),
            (by_batch, lambda s: s["epoch"] >= 1 and s["step"] >= 1),
        ]
    )
    assert by_epoch.killed_at is not None and by_epoch.killed_at["step"] == 0
    assert by_batch.killed_at is not None
    first_kill = _global(by_batch.killed_at, steps)
    for run in (by_epoch, by_batch):
        assert not (run.workdir / "result.json").exists()

    resumed = Run(fork_server, url, tmp_path / "by_epoch")
    again = Run(fork_server, url, tmp_path / "by_batch", "--save-freq", "1")
    _kill_when([(again, lambda s: _global(s, steps) > first_kill and s["step"] >= 1)])
    final = Run(fork_server, url, tmp_path / "by_batch", "--save-freq", "1")
    resumed.finish()
    final.finish()

    for name in ("by_epoch", "by_batch"):
        result = json.loads((tmp_path / name / "result.json").read_text())
        assert result["variables"] == reference["variables"]
        assert result["optimizer"] == reference["optimizer"]  # RNG, population, pool
        assert result["epochs"] == reference["epochs"]  # same early-stopping epoch
        assert result["stopped_epoch"] == reference["stopped_epoch"]
        assert _columns(result["history"]) == _columns(reference["history"])
        # Usage too: nothing paid before the crash is paid (or counted) twice, nothing lost.
        every = {key: result["history"][key] for key in EVERY_COLUMN}
        assert every == {key: reference["history"][key] for key in EVERY_COLUMN}
        # No duplicate or missing CSV rows, and the finished run removed its backup.
        assert _csv_epochs(tmp_path / name / "log.csv") == list(range(n_epochs))
        assert not (tmp_path / name / "backup").exists()


def _paid_after_backup(workdir: Path, state: dict[str, Any]) -> int:
    """Replies the run paid for in the epoch its backup had not yet covered."""
    import sqlite3

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
    prefix = f"{state['run_id']}:{state['epoch']}:"
    return sum((json.loads(v).get("origin") or "").startswith(prefix) for v in values)


def test_calls_paid_after_the_last_backup_are_neither_paid_nor_counted_twice(
    llm_server: FakeLLMServer, fork_server: ForkServer, tmp_path: Path
) -> None:
    """Killed mid-epoch with calls paid since its epoch backup: the resumed run's whole history,
    usage included, equals the uninterrupted run's, and the server saw no request twice."""
    url = llm_server.base_url
    wire_model = FakeLLMServer.model("arith", min_examples=2, latency_ms=100.0, tag="resume")
    wire_model = wire_model.split("/", 1)[1]
    llm_server.reset(wire_model)
    reference = asyncio.run(fit_script.run(url, tmp_path / "reference", latency_ms=100.0))
    paid = sum(reference["history"]["lm_calls"])
    assert llm_server.stats()["by_model"][wire_model] == paid

    killed = Run(fork_server, url, tmp_path / "run", "--latency-ms", "100")
    # Killed as soon as a reply of an epoch its backup does not cover yet is on disk.
    _kill_when([(killed, lambda state: _paid_after_backup(tmp_path / "run", state) > 0)])
    assert killed.killed_at is not None
    backup = _backup_state(tmp_path / "run" / "backup")
    assert backup is not None
    assert _paid_after_backup(tmp_path / "run", backup) > 0, "the kill came before any paid call"
    resumed = Run(fork_server, url, tmp_path / "run", "--latency-ms", "100")
    resumed.finish()
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["variables"] == reference["variables"]
    every = {key: result["history"][key] for key in EVERY_COLUMN}
    assert every == {key: reference["history"][key] for key in EVERY_COLUMN}
    # The killed and the resumed process together sent what one run sends, plus at most the
    # batch (2 requests) that was in flight, unanswered, when the kill came.
    sent = llm_server.stats()["by_model"][wire_model] - paid
    assert paid <= sent <= paid + 2


def test_sigkill_mid_search_resumes_the_same_search(
    llm_server: FakeLLMServer, fork_server: ForkServer, tmp_path: Path
) -> None:
    """BootstrapFewShot with a teacher, killed while challengers are racing (open races,
    bootstrapped pools, validated candidates in the backup): the resumed run ends exactly as
    the uninterrupted one, optimizer state included."""
    url = llm_server.base_url
    reference = asyncio.run(
        fit_script.run(url, tmp_path / "reference", save_freq=1, optimizer="bootstrap")
    )
    args = ("--save-freq", "1", "--optimizer", "bootstrap")
    run = Run(fork_server, url, tmp_path / "mid", *args)
    _kill_when([(run, lambda s: s["step"] >= 1 and bool(s["optimizer"]["races"]))])
    assert run.killed_at is not None and run.killed_at["optimizer"]["races"]
    assert run.killed_at["optimizer"]["bootstrapped"]
    Run(fork_server, url, tmp_path / "mid", *args).finish()
    result = json.loads((tmp_path / "mid" / "result.json").read_text())
    assert result["variables"] == reference["variables"]
    assert result["optimizer"] == reference["optimizer"]
    assert result["epochs"] == reference["epochs"]
    assert _columns(result["history"]) == _columns(reference["history"])


# --------------------------------------------------------------------------------------
# in-process crashes
# --------------------------------------------------------------------------------------


def test_integer_save_freq_resumes_mid_epoch(
    build: Callable[..., Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backup_dir = tmp_path / "backup"

    async def run(crash: CrashAt | None, stopper: Any = None) -> tuple[Any, pf.Program, Any]:
        program = await build()
        tag = RunTag(run_id=f"run-{id(program)}")
        callbacks: list[Callback] = [BackupAndRestore(backup_dir, save_freq=1), tag]
        if crash is not None:
            callbacks.append(crash)
        if stopper is not None:
            callbacks.append(stopper)
        history = await _fit(program, callbacks, epochs=4)
        return history, program, tag

    # The uninterrupted run and the crashed lineage each start from an empty response cache,
    # as two separate users would; the crash and its resume share theirs.
    monkeypatch.setenv("PROMPTFIT_CACHE_DIR", str(tmp_path / "reference-cache"))
    reference, ref_program, _ = asyncio.run(run(None))
    assert not backup_dir.exists()
    monkeypatch.setenv("PROMPTFIT_CACHE_DIR", str(tmp_path / "crashed-cache"))

    crash = CrashAt(global_step=5)  # 3 batches per epoch: epoch 1, after its 2nd batch
    with pytest.raises(Boom):
        asyncio.run(run(crash))
    saved = _backup_state(backup_dir)
    assert saved is not None
    assert (saved["epoch"], saved["step"]) == (1, 1)  # the backup of the batch before
    assert saved["callbacks"]["0:History"]["epoch"] == [0]
    tag_key = next(k for k in saved["callbacks"] if k.endswith(":RunTag"))
    crashed_run_id = saved["callbacks"][tag_key]["run_id"]

    crash.armed = False
    with caplog.at_level(logging.INFO, logger="promptfit"):
        history, program, tag = asyncio.run(run(crash))
    assert "continuing at epoch 2/4, batch 2/3" in caplog.text
    assert history.epoch == [0, 1, 2, 3]  # History restored, then continued
    assert _columns(history.history) == _columns(reference.history)
    assert program.get_variables() == ref_program.get_variables()
    assert program.optimizer.state_dict() == ref_program.optimizer.state_dict()
    assert tag.run_id == crashed_run_id  # a tracking callback keeps its run
    assert tag.epochs_seen == [0, 1, 2, 3]
    assert not backup_dir.exists()


def test_early_stopping_keeps_its_progress(build: Callable[..., Any], tmp_path: Path) -> None:
    backup_dir = tmp_path / "backup"

    async def run(crash: CrashAt) -> Any:
        program = await build()
        stopper = _early_stopping()
        history = await _fit(program, [BackupAndRestore(backup_dir), stopper, crash], epochs=8)
        return history, stopper

    reference, _ = asyncio.run(run(CrashAt(epoch=-1)))
    stopped = reference.epoch[-1]
    assert stopped < 7, "the reference run should stop early"
    crash = CrashAt(epoch=stopped - 1)
    with pytest.raises(Boom):
        asyncio.run(run(crash))
    crash.armed = False
    history, stopper = asyncio.run(run(crash))
    assert history.epoch == reference.epoch
    assert stopper.wait >= 1


def test_resume_after_stop_trains_no_further(build: Callable[..., Any], tmp_path: Path) -> None:
    backup_dir = tmp_path / "backup"

    class CrashOnEnd(Callback):
        armed = True

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            if self.armed:
                raise Boom("crash after the last backup, before it is deleted")

    crash = CrashOnEnd()

    async def run() -> tuple[Any, pf.Program]:
        program = await build()
        callbacks: list[Callback] = [BackupAndRestore(backup_dir), StopAfter(1), crash]
        return await _fit(program, callbacks, epochs=5), program

    with pytest.raises(Boom):
        asyncio.run(run())
    saved = _backup_state(backup_dir)
    assert saved is not None and saved["stop_training"] is True
    crash.armed = False
    history, program = asyncio.run(run())
    assert history.epoch == [0, 1]
    # Usage counters come back from the backup: no LM call was made after the restore.
    assert program.usage_totals().calls == sum(history.history["lm_calls"])
    assert not backup_dir.exists()


@pytest.fixture()
def crashed_backup(build: Callable[..., Any], tmp_path: Path) -> Path:
    """A backup left by a run that crashed at the end of epoch 1 (saved after epoch 0)."""
    backup_dir = tmp_path / "backup"

    async def run() -> None:
        await _fit(await build(), [BackupAndRestore(backup_dir), CrashAt(epoch=1)])

    with pytest.raises(Boom):
        asyncio.run(run())
    assert (backup_dir / "backup.json").exists(), "a failed run must keep its backup"
    return backup_dir


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"epochs": 4}, "epochs"),
        ({"batch_size": 4}, "batch_size"),
        ({"data": arithmetic_data(8, offset=50)}, "training data"),
        ({"name": "solver"}, "program structure"),
    ],
)
def test_a_different_run_is_refused_naming_the_difference(
    build: Callable[..., Any], crashed_backup: Path, change: dict[str, Any], named: str
) -> None:
    before = (crashed_backup / "backup.json").read_bytes()
    fit_kwargs = {k: v for k, v in change.items() if k != "name"}

    async def run() -> None:
        program = await build(name=change.get("name", "answer"))
        await _fit(program, [BackupAndRestore(crashed_backup), CrashAt()], **fit_kwargs)

    with pytest.raises(BackupMismatchError) as info:
        asyncio.run(run())
    message = str(info.value)
    assert named in message
    assert str(crashed_backup / "backup.json") in message
    assert "delete" in message
    # Only the named component differs, and the refused backup is left untouched.
    for other in ("epochs", "batch_size", "training data", "program structure"):
        if other != named:
            assert f"{other} (backup" not in message
    assert (crashed_backup / "backup.json").read_bytes() == before


def test_a_corrupt_backup_fails_naming_the_file(build: Callable[..., Any], tmp_path: Path) -> None:
    backup_dir = tmp_path / "backup"
    backup_dir.mkdir()
    (backup_dir / "backup.json").write_text('{"format": "promptfit.backup", "version": 1, "fit')

    async def run() -> None:
        await _fit(await build(), [BackupAndRestore(backup_dir)])

    with pytest.raises(CheckpointError, match="corrupt") as info:
        asyncio.run(run())
    assert str(backup_dir / "backup.json") in str(info.value)
    assert "Delete" in str(info.value)
    assert (backup_dir / "backup.json").exists()  # never deleted behind the user's back


def test_double_checkpoint_falls_back_to_the_previous_backup(
    build: Callable[..., Any], tmp_path: Path
) -> None:
    backup_dir = tmp_path / "backup"

    async def run(crash: CrashAt) -> tuple[Any, pf.Program]:
        program = await build()
        callbacks: list[Callback] = [
            BackupAndRestore(backup_dir, double_checkpoint=True),
            CSVLogger(tmp_path / "log.csv"),
            crash,
        ]
        return await _fit(program, callbacks, epochs=4), program

    reference, ref_program = asyncio.run(run(CrashAt()))
    assert not backup_dir.exists()  # both files removed after a normal end

    crash = CrashAt(epoch=2)
    with pytest.raises(Boom):
        asyncio.run(run(crash))
    latest = json.loads((backup_dir / "backup.json").read_text())["fit_state"]
    previous = json.loads((backup_dir / "backup.prev.json").read_text())["fit_state"]
    assert (latest["epoch"], previous["epoch"]) == (2, 1)

    (backup_dir / "backup.json").write_bytes(b"\x00garbage")
    crash.armed = False
    with pytest.warns(RuntimeWarning, match="previous backup"):
        history, program = asyncio.run(run(crash))
    assert history.epoch == [0, 1, 2, 3]
    assert _columns(history.history) == _columns(reference.history)
    assert program.get_variables() == ref_program.get_variables()
    assert _csv_epochs(tmp_path / "log.csv") == [0, 1, 2, 3]


def test_both_backups_corrupt_is_an_error(build: Callable[..., Any], tmp_path: Path) -> None:
    backup_dir = tmp_path / "backup"
    backup_dir.mkdir()
    (backup_dir / "backup.json").write_text("[]")
    (backup_dir / "backup.prev.json").write_text("not json")

    async def run() -> None:
        await _fit(await build(), [BackupAndRestore(backup_dir, double_checkpoint=True)])

    with pytest.raises(CheckpointError, match="Every backup") as info:
        asyncio.run(run())
    assert "backup.prev.json" in str(info.value)


def test_delete_checkpoint_false_keeps_the_final_backup(
    build: Callable[..., Any], tmp_path: Path
) -> None:
    backup_dir = tmp_path / "backup"

    async def run() -> tuple[Any, pf.Program]:
        program = await build()
        callbacks = [BackupAndRestore(backup_dir, delete_checkpoint=False)]
        return await _fit(program, callbacks, epochs=2), program

    first, _ = asyncio.run(run())
    saved = _backup_state(backup_dir)
    assert saved is not None and saved["epoch"] == 2
    # Running the same fit again restores the finished run: nothing left to train.
    second, program = asyncio.run(run())
    assert second.epoch == first.epoch == [0, 1]
    assert second.history == first.history
    assert program.usage_totals().calls == sum(first.history["lm_calls"])


def test_bad_arguments_are_refused_and_config_round_trips(tmp_path: Path) -> None:
    for save_freq in (0, -3, "batch", True, 1.5):
        with pytest.raises(ConfigurationError, match="save_freq"):
            BackupAndRestore(tmp_path, save_freq=save_freq)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="backup_dir"):
        BackupAndRestore("")
    callback = BackupAndRestore(tmp_path / "b", save_freq=7, double_checkpoint=True)
    config = callback.get_config()
    assert json.loads(json.dumps(config)) == config
    clone = BackupAndRestore.from_config(config)
    assert clone.get_config() == config
    assert clone.latest_path == tmp_path / "b" / "backup.json"


def test_unexpected_format_version_is_reported(build: Callable[..., Any], tmp_path: Path) -> None:
    backup_dir = tmp_path / "backup"
    backup_dir.mkdir()
    payload = {"format": "promptfit.backup", "version": 99, "fit_state": {}}
    (backup_dir / "backup.json").write_text(json.dumps(payload))

    async def run() -> None:
        await _fit(await build(), [BackupAndRestore(backup_dir)])

    with pytest.raises(CheckpointError, match="version 99"):
        asyncio.run(run())


def test_resume_with_another_verbosity_does_not_warn(
    calc_program: Callable[..., Any], tmp_path: Path
) -> None:
    """The progress bar is stateless: adding it on resume is not a changed callback list."""
    import warnings

    class CrashAtEpoch1(pf.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if epoch == 1:
                raise RuntimeError("simulated crash")

    async def run(crash: bool, verbose: int) -> Any:
        # One model string for both runs: another model would refuse the resume.
        program = await calc_program("arith", min_examples=2, tag="verbosity")
        callbacks: list[Any] = [pf.callbacks.BackupAndRestore(str(tmp_path / "b"))]
        if crash:
            callbacks.insert(0, CrashAtEpoch1())
        x, y = arithmetic_data(6)
        return await program.fit(
            x, y, epochs=2, batch_size=3, callbacks=callbacks, verbose=verbose, seed=0
        )

    with pytest.raises(RuntimeError, match="simulated crash"):
        asyncio.run(run(crash=True, verbose=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        history = asyncio.run(run(crash=False, verbose=2))
    assert history.epoch == [0, 1]
