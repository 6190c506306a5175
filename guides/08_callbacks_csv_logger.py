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
from _common import cli, describe_backend, language_model, output_dir, section

import promptfit as pf


class Query(pf.DataModel):
    question: str = pf.Field(description="An arithmetic question")


class Answer(pf.DataModel):
    answer: str = pf.Field(description="The numeric answer, digits only", max_length=12)


def arithmetic(n: int, offset: int = 0) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    pairs = [(i + offset, 5 * i + 2) for i in range(n)]
    return (
        [{"question": f"What is {a} + {b}?"} for a, b in pairs],
        [{"answer": str(a + b)} for a, b in pairs],
    )


async def calculator() -> pf.Program:
    lm = language_model("arith", min_examples=2)
    inputs = pf.Input(data_model=Query)
    outputs = await pf.Generator(
        data_model=Answer, language_model=lm, instructions="Answer with a number.", name="solver"
    )(inputs)
    program = pf.Program(inputs=inputs, outputs=outputs, name="calculator")
    program.compile(
        reward=pf.rewards.ExactMatch(in_mask=["answer"]),
        optimizer=pf.optimizers.RandomFewShot(k=2),
        metrics=[pf.metrics.Accuracy(in_mask=["answer"])],
    )
    return program


async def main() -> None:
    cli(__doc__)
    print("Backend:", describe_backend())
    out = output_dir()
    x, y = arithmetic(6)
    validation = arithmetic(2, offset=60)

    section("1. One row per epoch")
    path = out / "logs" / "history.csv"
    program = await calculator()
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
    program = await calculator()
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
