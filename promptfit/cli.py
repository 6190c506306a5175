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
    train_size: int = 12,
    val_size: int = 12,
    test_size: int = 24,
    verbose: int | str = "auto",
    monitor: bool = True,
) -> dict[str, Any]:
    """Fit a sentiment classifier and return a summary of the run.

    The shipped reviews are split three ways: the optimizer draws demonstrations from the
    training reviews, EarlyStopping and ProgramCheckpoint pick the epoch on the validation
    reviews, and the reported before/after scores come from the test reviews, which nothing in
    the fit ever sees. A score on the validation reviews would flatter the result: they are the
    ones the best epoch was chosen on.
    """
    import promptfit as pf
    from promptfit.datasets import Review, Sentiment, load_reviews

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x, y = load_reviews()
    if train_size + val_size + test_size > len(x):
        raise pf.errors.ConfigurationError(
            f"train_size + val_size + test_size = {train_size + val_size + test_size}, but only "
            f"{len(x)} reviews ship with promptfit; use smaller splits."
        )
    x_train, y_train = x[:train_size], y[:train_size]
    x_val, y_val = x[train_size : train_size + val_size], y[train_size : train_size + val_size]
    x_test = x[train_size + val_size : train_size + val_size + test_size]
    y_test = y[train_size + val_size : train_size + val_size + test_size]

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
    before = await program.evaluate(x_test, y_test, batch_size=batch_size, verbose=0)
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
    val_rewards = [v for v in history.history.get("val_reward", []) if v is not None]
    val_best = max(val_rewards) if val_rewards else float("nan")
    after = await program.evaluate(x_test, y_test, batch_size=batch_size, verbose=0)
    elapsed = time.perf_counter() - started
    program.save(out / "sentiment.json")
    usage = program.usage_totals()
    return {
        "model": model,
        "splits": {"train": len(x_train), "validation": len(x_val), "test": len(x_test)},
        "test_accuracy_before": before["reward"],
        "test_accuracy_after": after["reward"],
        "test_f1_before": before["f1_score"],
        "test_f1_after": after["f1_score"],
        "best_val_reward": val_best,
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
    splits = summary["splits"]
    rows = [
        ("model", summary["model"]),
        ("reviews (train/val/test)", f"{splits['train']}/{splits['validation']}/{splits['test']}"),
        (
            "test accuracy (held out)",
            f"{summary['test_accuracy_before']:.3f} -> {summary['test_accuracy_after']:.3f}",
        ),
        (
            "test macro F1 (held out)",
            f"{summary['test_f1_before']:.3f} -> {summary['test_f1_after']:.3f}",
        ),
        ("best validation accuracy", f"{summary['best_val_reward']:.3f}"),
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


def _first_of(error: BaseException, kind: type[Exception]) -> Exception | None:
    """``error`` itself if it is a ``kind``, else the first ``kind`` inside its groups."""
    if isinstance(error, kind):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _first_of(inner, kind)
            if found is not None:
                return found
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="promptfit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    qs = sub.add_parser("quickstart", help="Fit a sentiment classifier end to end.")
    qs.add_argument("--model", default=os.environ.get("PROMPTFIT_MODEL", DEFAULT_MODEL))
    qs.add_argument("--api-base", default=os.environ.get("PROMPTFIT_API_BASE"))
    qs.add_argument("--api-key-env", default=None, help="Env var holding the API key.")
    qs.add_argument("--out", default="promptfit_runs/quickstart")
    qs.add_argument("--epochs", type=int, default=2)
    qs.add_argument("--train-size", type=int, default=12)
    qs.add_argument("--val-size", type=int, default=12)
    qs.add_argument("--test-size", type=int, default=24, help="Held-out reviews for the score.")
    qs.add_argument("--batch-size", type=int, default=8)
    qs.add_argument("--no-monitor", action="store_true", help="Do not log to MLflow.")
    qs.add_argument("--verbose", default="auto")
    setup = sub.add_parser(
        "setup-local",
        help="Install the embedded model (a portable llama.cpp build and the weights).",
    )
    setup.add_argument("--force", action="store_true", help="Rebuild and reinstall llama.cpp.")
    args = parser.parse_args(argv)
    if args.command == "setup-local":
        from promptfit.language_models import native_build

        return native_build.main(["--force"] if args.force else [])
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    verbose: int | str = int(args.verbose) if str(args.verbose).isdigit() else args.verbose
    from promptfit.errors import PromptfitError

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
                test_size=args.test_size,
                verbose=verbose,
                monitor=not args.no_monitor,
            )
        )
    except KeyboardInterrupt:
        print("\nInterrupted. Run the same command again to resume from the last backup.")
        return 130
    except Exception as error:
        # A missing extra, a crashing native library, a refused key: the message says what
        # to do, and a traceback would only bury it. Concurrent work raises them in groups.
        found = _first_of(error, PromptfitError)
        if found is not None:
            print(f"\npromptfit quickstart failed: {found}", file=sys.stderr)
            return 1
        # The output directory cannot be created or written (a file in the way, no permission,
        # a full disk): say which, not where in promptfit it was noticed.
        disk = _first_of(error, OSError)
        if disk is None:
            raise
        print(
            f"\npromptfit quickstart failed: {disk}. If that is the output directory, pass --out "
            f"a directory you can write to (now {args.out!r}).",
            file=sys.stderr,
        )
        return 1
    _print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
