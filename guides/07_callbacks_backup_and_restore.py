"""Guide 07: BackupAndRestore.

Prompt training is slow and billed per call. A run that dies at epoch 7 of 10 (the laptop
sleeps, the job is pre-empted, the network drops, you press Ctrl-C) should not pay for epochs
1 to 6 again. ``BackupAndRestore`` makes ``fit`` resumable, as its Keras namesake does, but
more completely:

* **What is backed up** is everything ``fit`` needs to continue *exactly*: the variables, the
  optimizer's state (its random generator and demonstration pool included), the epoch and batch
  position, the running reward and metric accumulators of a half-finished epoch, the LM usage
  counters, and the ``state_dict()`` of every other callback. ``History`` keeps all its epochs,
  ``EarlyStopping`` its patience counter, ``CSVLogger`` writes no duplicate rows, a ``Monitor``
  continues the same MLflow run.
* **When**: once as the fit starts (before any LM call, so a crash in the first epoch resumes
  the same run), then every epoch (``save_freq="epoch"``) or every N batches (``save_freq=N``),
  so a crash loses at most N batches of LM calls (and the on-disk response cache gives those
  back without paying again).
* **How**: atomically (temporary file, fsync, rename), so even a SIGKILL mid-write leaves the
  previous complete backup. ``double_checkpoint=True`` also keeps the one before it.
* **Resuming** is just calling the same ``fit`` again with a ``BackupAndRestore`` on the same
  directory. With a deterministic model the resumed run ends *identical* to an uninterrupted
  one. When the run completes, the backup is deleted.
* **Safety**: a backup made by a different run (other program structure, data, ``epochs`` or
  ``batch_size``) is refused with ``BackupMismatchError`` instead of silently mixing two runs.

This guide crashes a run on purpose with an exception raised from a callback, resumes it, and
compares it with a run that was never interrupted. Guide 12 does the same with a real SIGKILL.

Run it::

    python guides/07_callbacks_backup_and_restore.py --lm fake
"""

from __future__ import annotations

import asyncio
import json

from _common import (
    arithmetic,
    calculator,
    cli,
    describe_backend,
    note_determinism,
    output_dir,
    section,
)

import promptfit as pf
from promptfit.errors import BackupMismatchError

# Query, Answer, arithmetic() and calculator() are shared by guides 04-13: see _common.py.


class SimulatedCrash(RuntimeError):
    """Stands in for an out-of-memory kill, a network outage, a pre-empted machine..."""


class CrashAt(pf.callbacks.Callback):
    """Raise once, after a given training batch of a given epoch."""

    def __init__(self, epoch: int, batch: int) -> None:
        super().__init__()
        self.at = (epoch, batch)
        self.epoch = 0
        self.armed = True

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.armed and (self.epoch, batch) == self.at:
            self.armed = False
            raise SimulatedCrash(f"boom at epoch {self.epoch}, batch {batch}")


async def main() -> None:
    cli(__doc__)
    print("Backend:", describe_backend())
    out = output_dir()
    x, y = arithmetic(6, step=4, start=1)
    validation = arithmetic(2, offset=70, step=4, start=1)
    fit_args = {
        "epochs": 3,
        "batch_size": 2,
        "validation_data": validation,
        "seed": 7,
        "verbose": 2,
    }

    section("1. The reference: a run that is never interrupted")
    reference = await calculator()
    reference_history = await reference.fit(x, y, **fit_args)
    print("rewards:", reference_history.history["reward"])

    section("2. The same run, crashing in epoch 2")
    backup_dir = out / "backup"
    program = await calculator()
    backup = pf.callbacks.BackupAndRestore(backup_dir, save_freq=1, double_checkpoint=True)
    try:
        await program.fit(x, y, callbacks=[CrashAt(1, 1), backup], **fit_args)
    except SimulatedCrash as crash:
        print("crashed:", crash)
    saved = json.loads((backup_dir / "backup.json").read_text())["fit_state"]
    print("backup files:", sorted(p.name for p in backup_dir.iterdir()))
    print(f"backup is at epoch {saved['epoch']}, step {saved['step']}; it holds:")
    print("  ", sorted(saved))

    section("3. Refused: a backup from a different run")
    other = await calculator()
    try:
        other_x, other_y = arithmetic(6, offset=1, step=4, start=1)
        await other.fit(
            other_x,
            other_y,
            callbacks=[pf.callbacks.BackupAndRestore(backup_dir)],
            **fit_args,
        )
    except BackupMismatchError as error:
        print("BackupMismatchError:", str(error)[:150], "...")

    section("4. Resume: run the same fit again")
    # A new process would rebuild the program from code exactly like this.
    program = await calculator()
    backup = pf.callbacks.BackupAndRestore(backup_dir, save_freq=1, double_checkpoint=True)
    # Pass the same callbacks in the same order (their saved states are matched by position);
    # this CrashAt never fires.
    history = await program.fit(x, y, callbacks=[CrashAt(-1, -1), backup], **fit_args)
    print("rewards:", history.history["reward"])
    print("History kept every epoch:", history.epoch)
    same_variables = program.get_variables() == reference.get_variables()
    same_rewards = all(
        history.history[k] == reference_history.history[k] for k in ("reward", "val_reward")
    )
    print("same variables as the reference:", same_variables)
    print("same rewards as the reference  :", same_rewards)
    note_determinism(same_variables and same_rewards)
    print("backup deleted after success   :", not backup_dir.exists())


if __name__ == "__main__":
    asyncio.run(main())
