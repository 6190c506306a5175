"""Guide 06: ProgramCheckpoint.

A trained prompt is an artefact you ship, so ``fit`` should leave files behind: the best
program by validation reward, maybe the last few, maybe only the variables of the module you
are tuning. ``ProgramCheckpoint`` is Keras' ``ModelCheckpoint`` for programs, plus what
long-running LLM jobs need:

* **Named from the logs.** ``filepath`` is a format string filled from the epoch's logs:
  ``"ckpt/calc-{epoch:02d}-{val_reward:.2f}.json"``. Only plain names are allowed, checked
  when the callback is built, not after the first paid-for epoch.
* **Atomic.** Every file is written to a temporary name, fsynced and renamed: a crash never
  leaves a half-written checkpoint that looks valid.
* **A manifest.** Every save is recorded in ``checkpoints.json`` beside the files, with the
  epoch, the monitored value and all the logs. ``pf.checkpoints.best_checkpoint(dir)`` and
  ``latest_checkpoint(dir)`` answer from that data, never by parsing file names.
* **Retention.** ``keep_top_k=k`` keeps the ``k`` best files and deletes the others (never the
  newest, never a tagged one). On a tie the earlier checkpoint stays best, for the ``best``
  tag, the ranking and ``best_checkpoint()`` alike.
* **Tolerances.** ``tolerances=[2]`` also keeps the checkpoint an ``EarlyStopping(patience=2)``
  run *would have ended with*, tagged ``tolerance_2``: one long run answers "what if I had
  stopped earlier?" without rerunning it.
* **Parts of a program.** ``save_variables_only=True`` writes only variables (small, to load
  into a program you build in code); ``module_names=[...]`` only those modules' variables.
* **on_best.** Callbacks run whenever a new best is saved, with keys prefixed
  ``best=<monitor>/`` (e.g. a CSV of the best-so-far metrics).

A program file never holds an API key: loading it needs the key again (``api_key=``) or the
live client (``language_models={name: lm}``).

Run it::

    python guides/06_callbacks_program_checkpoint.py --lm fake
"""

from __future__ import annotations

import asyncio
import json

from _common import (
    arithmetic,
    calculator,
    cli,
    describe_backend,
    language_model,
    output_dir,
    section,
)

import promptfit as pf
from promptfit.checkpoints import best_checkpoint, latest_checkpoint, read_manifest

# Query, Answer, arithmetic() and calculator() are shared by guides 04-13: see _common.py.


async def main() -> None:
    cli(__doc__)
    print("Backend:", describe_backend())
    out = output_dir()
    x, y = arithmetic(6, step=2, start=5)
    validation = arithmetic(3, offset=30, step=2, start=5)
    lm = language_model("arith", min_examples=2)

    section("1. Save every epoch, keep the best, remember tolerance 1")
    program = await calculator(lm)
    directory = out / "checkpoints"
    # This tiny run reaches a perfect val_reward at once, so the guide watches the training
    # reward to show an improvement; in real runs monitor a val_ key.
    checkpoint = pf.callbacks.ProgramCheckpoint(
        filepath=str(directory / "calc-{epoch:02d}-{reward:.2f}.json"),
        monitor="reward",
        keep_top_k=1,
        tolerances=[1],
        on_best=[pf.callbacks.CSVLogger(out / "best_so_far.csv")],
        verbose=1,
    )
    await program.fit(
        x,
        y,
        epochs=3,
        batch_size=3,
        validation_data=validation,
        callbacks=[checkpoint],
        seed=0,
        verbose=0,
    )
    print("files  :", sorted(p.name for p in directory.iterdir()))

    section("2. The manifest: best and latest from data, not from file names")
    manifest = read_manifest(directory)
    for entry in manifest.entries:
        print(
            f"  {entry['path']:<24} epoch={entry['epoch']} value={entry['value']} "
            f"tags={entry['tags']}"
        )
    # keep_top_k=1 deleted the worst file but kept the newest one. One rule for ties: the
    # earlier checkpoint stays best (a later one must improve strictly, as save_best_only
    # decides), so the 'best' tag, keep_top_k's ranking and best_checkpoint() pick one file.
    print("best   :", best_checkpoint(directory))
    print("latest :", latest_checkpoint(directory))
    print("best so far (on_best CSV):")
    print((out / "best_so_far.csv").read_text().strip())

    section("3. Load the best program")
    # No API key in the file: hand over the live client, or pass api_key=...
    best = pf.load_program(best_checkpoint(directory), language_models={lm.name: lm})
    best.compile(reward=pf.rewards.ExactMatch(in_mask=["answer"]))
    print("reloaded val reward:", (await best.evaluate(*validation, verbose=0))["reward"])
    text = (directory / manifest.entries[0]["path"]).read_text()
    print("a key-shaped secret in the file:", "sk-" in text)

    section("4. Only the best, only variables")
    program = await calculator(lm)
    variables_dir = out / "variables"
    best_only = pf.callbacks.ProgramCheckpoint(
        filepath=str(variables_dir / "solver.json"),
        monitor="val_reward",
        save_best_only=True,
        save_variables_only=True,
        verbose=1,
    )
    await program.fit(
        x,
        y,
        epochs=3,
        batch_size=3,
        validation_data=validation,
        callbacks=[best_only],
        seed=0,
        verbose=0,
    )
    saved = json.loads((variables_dir / "solver.json").read_text())
    print("variables file holds:", sorted(saved["variables"]))
    # Variables load into a program you built in code: the code stays the source of truth.
    fresh = await calculator(lm)
    fresh.load_variables(variables_dir / "solver.json")
    print("examples loaded:", len(fresh.get_variables()["solver/prompt"]["examples"]))

    section("5. Every N batches, and a final save")
    program = await calculator(lm)
    frequent = pf.callbacks.ProgramCheckpoint(
        filepath=str(out / "steps" / "calc-e{epoch}-b{batch}.json"), monitor="reward", save_freq=2
    )
    # 3 batches: a save after the 2nd, and a final save after the 3rd, so the steps after the
    # last save point are never lost when training ends between two of them.
    await program.fit(x, y, epochs=1, batch_size=2, callbacks=[frequent], seed=0, verbose=0)
    print("per-batch files:", sorted(p.name for p in (out / "steps").glob("*.json")))


if __name__ == "__main__":
    asyncio.run(main())
