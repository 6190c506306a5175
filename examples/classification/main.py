"""Review sentiment classification: a complete promptfit project in one file.

Trains a one-generator program to label reviews ``positive`` or ``negative`` on the dataset
shipped with promptfit (``promptfit/datasets/reviews.jsonl``, 60 reviews), the way a real
project would:

1. split the data into train / validation / test (fixed seed);
2. measure the untrained prompt on the test set;
3. ``fit`` with few-shot optimisation, early stopping on ``val_reward``, the best checkpoint
   kept, a CSV log, and a backup so an interrupted run resumes where it stopped;
4. measure the trained prompt on the test set, save it, and reload it to classify new text.

Run it::

    python examples/classification/main.py                 # embedded offline model
    python examples/classification/main.py --lm fake       # deterministic test server
    python examples/classification/main.py --lm openai/gpt-4o-mini --out runs/sentiment
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "guides"))
from _common import add_arguments, cli, describe_backend, language_model, output_dir, section

import promptfit as pf
from promptfit.checkpoints import best_checkpoint
from promptfit.datasets import Review, Sentiment, load_reviews


def split(seed: int = 0) -> dict[str, tuple[list[Review], list[Sentiment]]]:
    """Shuffle the shipped reviews once with a fixed seed, then cut train / validation / test
    (24 / 12 / 24)."""
    x, y = load_reviews()
    rows = list(zip(x, y, strict=True))
    random.Random(seed).shuffle(rows)
    parts = {"train": rows[:24], "validation": rows[24:36], "test": rows[36:]}
    return {
        name: ([r for r, _ in part], [label for _, label in part]) for name, part in parts.items()
    }


async def build_program(lm: pf.LanguageModel) -> pf.Program:
    inputs = pf.Input(data_model=Review)
    outputs = await pf.Generator(
        data_model=Sentiment,
        language_model=lm,
        instructions="Classify the sentiment of the review as positive or negative.",
        name="classifier",
    )(inputs)
    program = pf.Program(inputs=inputs, outputs=outputs, name="sentiment")
    program.compile(
        reward=pf.rewards.ExactMatch(in_mask=["label"]),
        optimizer=pf.optimizers.RandomFewShot(k=4, num_candidates=1),
        metrics=[
            pf.metrics.Accuracy(in_mask=["label"]),
            pf.metrics.F1Score(average="macro", in_mask=["label"]),
        ],
    )
    return program


async def main() -> None:
    parser = add_arguments(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--epochs", type=int, default=2)
    args = cli(parser=parser)
    print("Backend:", describe_backend())
    out = output_dir()
    data = split()

    # On the fake backend, min_examples=2 simulates a model that needs demonstrations.
    lm = language_model("sentiment", min_examples=2, max_concurrency=8)
    program = await build_program(lm)

    section("Before training (test set)")
    before = await program.evaluate(*data["test"], verbose=0)
    print({k: round(v, 3) for k, v in before.items() if k in ("reward", "accuracy", "f1_score")})

    section("Training")
    callbacks = [
        pf.callbacks.EarlyStopping(
            monitor="val_reward", patience=1, restore_best_variables=True, verbose=1
        ),
        pf.callbacks.ProgramCheckpoint(
            str(out / "checkpoints" / "sentiment-{epoch:02d}-{val_reward:.3f}.json"),
            monitor="val_reward",
            save_best_only=True,
            keep_top_k=2,
        ),
        pf.callbacks.CSVLogger(out / "history.csv"),
        pf.callbacks.BackupAndRestore(out / "backup"),
    ]
    history = await program.fit(
        *data["train"],
        epochs=args.epochs,
        batch_size=8,
        validation_data=data["validation"],
        callbacks=callbacks,
        seed=0,
        verbose=2,
    )

    section("After training (test set)")
    after = await program.evaluate(*data["test"], verbose=0)
    print({k: round(v, 3) for k, v in after.items() if k in ("reward", "accuracy", "f1_score")})
    examples = program.get_variables()["classifier/prompt"]["examples"]
    print(f"learned {len(examples)} few-shot examples, e.g.:")
    for example in examples[:2]:
        print(f"  {example['inputs']['review'][:60]!r} -> {example['outputs']['label']}")
    print("usage:", program.usage_totals().as_dict())
    print("epochs run:", len(history.epoch))

    section("Ship it")
    path = program.save(out / "sentiment.json")
    print("saved:", path)
    print("best checkpoint:", best_checkpoint(out / "checkpoints"))
    classifier = pf.load_program(path, language_models={lm.name: lm})
    new_reviews = [
        {"review": "Great value, and the battery lasts for days. I love it."},
        {"review": "It broke after a week and support never answered. Awful."},
    ]
    for review, prediction in zip(
        new_reviews, await classifier.predict(new_reviews, verbose=0), strict=True
    ):
        print(f"  {review['review'][:50]!r} -> {prediction.label if prediction else None}")


if __name__ == "__main__":
    asyncio.run(main())
