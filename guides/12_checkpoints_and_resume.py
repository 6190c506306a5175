"""Guide 12: checkpoints and crash-safe resume, with a real SIGKILL.

Two kinds of file come out of a long run, and they answer different questions:

* **Checkpoints** (``ProgramCheckpoint``, guide 06) are *artefacts*: programs or variables
  you load to serve or to compare, found through the ``checkpoints.json`` manifest with
  ``best_checkpoint`` / ``latest_checkpoint``. They are kept after the run.
* **The backup** (``BackupAndRestore``, guide 07) is *the run itself*: everything needed to
  continue ``fit`` where it stopped, optimizer and callbacks included. It is deleted once the
  run completes.

Guide 07 crashed with a Python exception, which still runs ``finally`` blocks and
``on_train_error``. Real crashes are ruder: the kernel's out-of-memory killer, a pre-empted
cloud machine or ``kill -9`` stop the process between two instructions, possibly in the middle
of writing a file. This guide trains in a child process that SIGKILLs itself half-way through
an epoch, then resumes in this process and checks that:

* the backup, the checkpoints, the manifest and the CSV log are all intact (every write is
  atomic: temporary file, fsync, rename; the CSV is appended and fsynced row by row);
* the resumed run redoes only the batches after the last backup (``save_freq=1``: at most one
  batch of LM calls is lost);
* the CSV log has each epoch once, the manifest lists every checkpoint once, and the final
  program is *identical* to one trained without interruption (deterministic model, same seed).

Run it::

    python guides/12_checkpoints_and_resume.py --lm fake
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from _common import (
    Query,
    arithmetic,
    backend,
    calculator,
    cli,
    describe_backend,
    note_determinism,
    output_dir,
    section,
)

import promptfit as pf
from promptfit.checkpoints import best_checkpoint, latest_checkpoint, read_manifest
from promptfit.training.context import FitContext

KILL_ENV = "PROMPTFIT_GUIDE12_KILL_AT_STEP"


# Query, Answer, arithmetic() and calculator() are shared by guides 04-13: see _common.py.
X, Y = arithmetic(6, step=8, start=1)
VALIDATION = arithmetic(2, offset=40, step=8, start=1)


class KillAt(pf.callbacks.Callback):
    """SIGKILL this process when training step ``step`` (counted over the run) begins."""

    def __init__(self, step: int | None) -> None:
        super().__init__()
        self.step = step

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        state = self.context  # the running fit's FitContext: its counters, also after a resume
        if isinstance(state, FitContext) and state.global_step == self.step:
            print(f"[child] SIGKILL at epoch {state.epoch}, batch {batch}", flush=True)
            if hasattr(signal, "SIGKILL"):
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(137)  # where there is no SIGKILL: just as abrupt, no cleanup at all


async def train(out: Path, kill_at: int | None) -> pf.Program:
    """The training script: the crashed run, the resumed run and the reference all run this."""
    program = await calculator()
    callbacks = [
        pf.callbacks.CSVLogger(out / "history.csv"),
        pf.callbacks.ProgramCheckpoint(
            str(out / "checkpoints" / "calc-{epoch:02d}.json"), monitor="val_reward"
        ),
        KillAt(kill_at),
        pf.callbacks.BackupAndRestore(out / "backup", save_freq=1),
    ]
    await program.fit(
        X,
        Y,
        epochs=2,
        batch_size=2,
        validation_data=VALIDATION,
        callbacks=callbacks,
        seed=0,
        # Every run gets the same callbacks in the same order, progress printer included:
        # a resumed run gives each callback back its saved state by position.
        verbose=2,
    )
    return program


def show_disk(out: Path) -> None:
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        print(f"  {path.relative_to(out)} ({path.stat().st_size} bytes)")


async def main() -> None:
    cli(__doc__)
    if os.environ.get(KILL_ENV):  # the child process
        await train(output_dir(), kill_at=int(os.environ[KILL_ENV]))
        return
    print("Backend:", describe_backend())
    out = output_dir()

    section("1. Reference: the same training, never interrupted")
    reference = await train(out / "reference", kill_at=None)
    print("reference variables:", reference.get_variables()["solver/prompt"]["examples"][:1])

    section("2. Train in a child process that SIGKILLs itself at step 4 of 6")
    run_dir = out / "run"
    child = subprocess.run(
        [sys.executable, __file__, "--lm", backend(), "--out", str(run_dir)],
        env={**os.environ, KILL_ENV: "4"},
        capture_output=True,
        text=True,
        timeout=1800,  # generous: the embedded model on a busy CPU is slow
        check=False,
    )
    print(child.stdout.strip())
    print("child exit code:", child.returncode, "(-9: killed by SIGKILL)")
    print("on disk after the kill:")
    show_disk(run_dir)

    section("3. Resume: run the same training again")
    program = await train(run_dir, kill_at=None)

    section("4. Everything is consistent")
    history = pd.read_csv(run_dir / "history.csv")
    print("CSV epochs      :", history["epoch"].tolist(), "(each once)")
    manifest = read_manifest(run_dir / "checkpoints")
    print("checkpoints     :", [entry["path"] for entry in manifest.entries])
    print(
        "best / latest   :",
        Path(best_checkpoint(run_dir / "checkpoints") or "-").name,
        "/",
        Path(latest_checkpoint(run_dir / "checkpoints") or "-").name,
    )
    print("backup removed  :", not (run_dir / "backup").exists())
    reference_history = pd.read_csv(out / "reference" / "history.csv")
    same_variables = program.get_variables() == reference.get_variables()
    same_rewards = history["val_reward"].tolist() == reference_history["val_reward"].tolist()
    print("same variables as the uninterrupted run:", same_variables)
    print("same rewards as the uninterrupted run  :", same_rewards)
    note_determinism(same_variables and same_rewards)

    section("5. Serve the best checkpoint")
    lm = program.modules[0].language_model
    best = pf.load_program(best_checkpoint(run_dir / "checkpoints"), language_models={lm.name: lm})
    print(await best(Query(question="What is 120 + 3?")))


if __name__ == "__main__":
    asyncio.run(main())
