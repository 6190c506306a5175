"""Guide 08: CSVLogger.

The simplest record of a run that any tool can read: one CSV row per epoch, the ``epoch``
column first, then every logged key (rewards, metrics, ``val_*``, and what the epoch cost in
``lm_calls``, ``tokens`` and ``cost``). It opens in pandas, a spreadsheet or a plotting script
while the run is still going.

Why it is more than ``open(...).write``:

* **Crash-safe.** Each row is flushed and fsynced as it is written, so the file survives a
  crash up to the last finished epoch.
* **Resumable without duplicates.** With ``BackupAndRestore``, a resumed run first cuts the
  file back to the rows the backup knew about, then writes the redone epochs once.
* **A fixed header that can still grow.** The header comes from the first epoch; if a later
  epoch logs a new key, the file is rewritten atomically with the column added and ``NA`` in
  earlier rows (which pandas reads as NaN).
* ``append=True`` keeps adding to an existing file across several ``fit`` calls (reusing its
  header), and ``separator=";"`` or ``"\\t"`` suits other tools.

Run it::

    python guides/08_callbacks_csv_logger.py --lm fake
"""

from __future__ import annotations

import asyncio

import pandas as pd
from _common import arithmetic, calculator, cli, describe_backend, output_dir, section

import promptfit as pf

# Query, Answer, arithmetic() and calculator() are shared by guides 04-13: see _common.py.


async def main() -> None:
    cli(__doc__)
    print("Backend:", describe_backend())
    out = output_dir()
    x, y = arithmetic(6, step=5, start=2)
    validation = arithmetic(2, offset=60, step=5, start=2)

    section("1. One row per epoch")
    path = out / "logs" / "history.csv"
    program = await calculator(metrics=[pf.metrics.Accuracy(in_mask=["answer"])])
    await program.fit(
        x,
        y,
        epochs=3,
        batch_size=3,
        validation_data=validation,
        callbacks=[pf.callbacks.CSVLogger(path)],
        seed=0,
        verbose=0,
    )
    print(path.read_text())

    section("2. Read it back with pandas")
    frame = pd.read_csv(path)
    print(frame[["epoch", "reward", "val_reward", "lm_calls", "tokens"]].to_string(index=False))
    print("total LM calls of the run:", int(frame["lm_calls"].sum()))

    section("3. append=True: several fits, one table")
    # A second fit continues training the same program; its epochs are appended.
    await program.fit(
        x,
        y,
        epochs=2,
        batch_size=3,
        validation_data=validation,
        callbacks=[pf.callbacks.CSVLogger(path, append=True)],
        seed=1,
        verbose=0,
    )
    frame = pd.read_csv(path)
    print(f"{len(frame)} rows; epoch column: {frame['epoch'].tolist()}")

    section("4. Another separator")
    tsv = out / "logs" / "history.tsv"
    program = await calculator(metrics=[pf.metrics.Accuracy(in_mask=["answer"])])
    await program.fit(
        x,
        y,
        epochs=1,
        batch_size=3,
        callbacks=[pf.callbacks.CSVLogger(tsv, separator="\t")],
        seed=0,
        verbose=0,
    )
    print(tsv.read_text().replace("\t", " | "))


if __name__ == "__main__":
    asyncio.run(main())
