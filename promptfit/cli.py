"""The ``promptfit`` command line: ``promptfit quickstart`` runs a real fit end to end.

The quickstart trains a review-sentiment classifier on the dataset shipped with promptfit,
with every production callback on, and prints what changed. With no flags it uses the embedded
offline model (``promptfit[local]``); ``--model``/``--api-base`` point it at any litellm model.
Interrupt it (Ctrl-C) and run it again: BackupAndRestore resumes after the last finished epoch.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "quickstart"]

DEFAULT_MODEL = "local/gemma-3-270m"


async def quickstart(
    model: str = DEFAULT_MODEL,
    api_base: str | None = None,
    api_key: str | None = None,
    out: str | Path = "promptfit_runs/quickstart",
    epochs: int = 2,
    batch_size: int = 8,
    train_size: int = 16,
    val_size: int = 16,
    verbose: int | str = "auto",
    monitor: bool = True,
) -> dict[str, Any]:
    """Fit a sentiment classifier and return a summary of the run."""
    import promptfit as pf
    from promptfit.datasets import Review, Sentiment, load_reviews

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x, y = load_reviews()
    x_train, y_train = x[:train_size], y[:train_size]
    x_val, y_val = x[train_size : train_size + val_size], y[train_size : train_size + val_size]

    lm = pf.LanguageModel(
        model=model,
        api_base=api_base,
        api_key=api_key,
        max_concurrency=8 if model.startswith("local/") else 32,
        cache=out / "lm_cache.sqlite",
    )
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
        optimizer=pf.optimizers.RandomFewShot(k=4, num_candidates=1, seed=0),
        metrics=[pf.metrics.F1Score(average="macro", in_mask=["label"])],
    )

    started = time.perf_counter()
    before = await program.evaluate(x_val, y_val, batch_size=batch_size, verbose=0)
    callbacks: list[Any] = [
        pf.callbacks.EarlyStopping(
            monitor="val_reward", patience=1, restore_best_variables=True, verbose=1
        ),
        pf.callbacks.ProgramCheckpoint(
            str(out / "checkpoints" / "sentiment-{epoch:02d}-{val_reward:.3f}.json"),
            monitor="val_reward",
            save_best_only=True,
            keep_top_k=2,
        ),
        pf.callbacks.BackupAndRestore(str(out / "backup")),
        pf.callbacks.CSVLogger(str(out / "history.csv")),
    ]
    if monitor:
        callbacks.append(
            pf.callbacks.Monitor(
                experiment_name="promptfit-quickstart",
                tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}",
            )
        )
    history = await program.fit(
        x_train,
        y_train,
        epochs=epochs,
        batch_size=batch_size,
        validation_data=(x_val, y_val),
        callbacks=callbacks,
        verbose=verbose,
        seed=0,
    )
    after = await program.evaluate(x_val, y_val, batch_size=batch_size, verbose=0)
    elapsed = time.perf_counter() - started
    program.save(out / "sentiment.json")
    usage = program.usage_totals()
    return {
        "model": model,
        "val_reward_before": before["reward"],
        "val_reward_after": after["reward"],
        "val_f1_before": before["f1_score"],
        "val_f1_after": after["f1_score"],
        "epochs_run": len(history.epoch),
        "lm_calls": usage.calls,
        "cache_hits": usage.cache_hits,
        "failed_calls": usage.failed_calls,
        "seconds": round(elapsed, 1),
        "program": str(out / "sentiment.json"),
        "checkpoints": str(out / "checkpoints"),
        "history_csv": str(out / "history.csv"),
        "mlflow": f"sqlite:///{(out / 'mlflow.db').resolve()}" if monitor else None,
        "examples": len(program.get_variables()["classifier/prompt"]["examples"]),
    }


def _print_summary(summary: dict[str, Any]) -> None:
    rows = [
        ("model", summary["model"]),
        (
            "validation accuracy",
            f"{summary['val_reward_before']:.3f} -> {summary['val_reward_after']:.3f}",
        ),
        ("validation macro F1", f"{summary['val_f1_before']:.3f} -> {summary['val_f1_after']:.3f}"),
        ("few-shot examples learned", summary["examples"]),
        ("epochs run", summary["epochs_run"]),
        ("LM calls (cache hits)", f"{summary['lm_calls']} ({summary['cache_hits']})"),
        ("failed calls", summary["failed_calls"]),
        ("time", f"{summary['seconds']} s"),
        ("trained program", summary["program"]),
        ("checkpoints", summary["checkpoints"]),
        ("history CSV", summary["history_csv"]),
        ("MLflow store", summary["mlflow"] or "-"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    print("promptfit quickstart")
    print("-" * (width + 40))
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if summary["mlflow"]:
        print(f"\nBrowse the run: mlflow ui --backend-store-uri {summary['mlflow']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="promptfit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    qs = sub.add_parser("quickstart", help="Fit a sentiment classifier end to end.")
    qs.add_argument("--model", default=os.environ.get("PROMPTFIT_MODEL", DEFAULT_MODEL))
    qs.add_argument("--api-base", default=os.environ.get("PROMPTFIT_API_BASE"))
    qs.add_argument("--api-key-env", default=None, help="Env var holding the API key.")
    qs.add_argument("--out", default="promptfit_runs/quickstart")
    qs.add_argument("--epochs", type=int, default=2)
    qs.add_argument("--train-size", type=int, default=16)
    qs.add_argument("--val-size", type=int, default=16)
    qs.add_argument("--batch-size", type=int, default=8)
    qs.add_argument("--no-monitor", action="store_true", help="Do not log to MLflow.")
    qs.add_argument("--verbose", default="auto")
    args = parser.parse_args(argv)
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    verbose: int | str = int(args.verbose) if str(args.verbose).isdigit() else args.verbose
    try:
        summary = asyncio.run(
            quickstart(
                model=args.model,
                api_base=args.api_base,
                api_key=api_key,
                out=args.out,
                epochs=args.epochs,
                batch_size=args.batch_size,
                train_size=args.train_size,
                val_size=args.val_size,
                verbose=verbose,
                monitor=not args.no_monitor,
            )
        )
    except KeyboardInterrupt:
        print("\nInterrupted. Run the same command again to resume from the last backup.")
        return 130
    _print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
