"""Guide 09: Monitor, experiment tracking with MLflow.

A CSV tells you how one run went; comparing twenty runs (which optimizer, which ``k``, which
model, what it cost) needs a tracker. ``pf.callbacks.Monitor`` logs a ``fit`` as an MLflow
run:

* **params**: the fit arguments (``epochs``, ``batch_size``, ``seed``...), the compile
  configuration (reward, optimizer, metrics), every callback's configuration and every
  language model's configuration, API keys scrubbed;
* **metrics**: every epoch's logs with ``step=epoch`` (``log_batch_metrics=True`` adds each
  batch as ``batch/<name>``), and the LM usage totals as ``usage/<name>`` at the end;
* **artifacts**: the trained program's JSON and, when a ``ProgramCheckpoint`` runs, its best
  checkpoint;
* **status**: ``FINISHED``, ``FAILED`` or ``KILLED``.

Tracking never slows training down or breaks it: hooks only queue data, one worker thread
talks to MLflow, a tracking server that is down costs one warning (the data is buffered and
retried), and nothing raised by MLflow reaches ``fit``. With ``BackupAndRestore``, a resumed
run continues the *same* MLflow run.

No server is needed: ``tracking_uri="sqlite:///path/mlflow.db"`` is MLflow's embedded store, a
single file. Browse it afterwards with ``mlflow ui --backend-store-uri sqlite:///path/mlflow.db``
(run this guide with ``--out DIR`` to keep the file). ``pf.enable_observability()`` (guide
11) attaches a Monitor to every ``fit`` automatically.

Run it::

    python guides/09_callbacks_monitor.py --lm fake --out runs/guide09
"""

from __future__ import annotations

import asyncio

import mlflow
from _common import arithmetic, calculator, cli, describe_backend, output_dir, section

import promptfit as pf

# Query, Answer, arithmetic() and calculator() are shared by guides 04-13: see _common.py.


async def main() -> None:
    cli(__doc__)
    print("Backend:", describe_backend())
    out = output_dir()
    tracking_uri = f"sqlite:///{out / 'mlflow.db'}"
    x, y = arithmetic(6, step=6, start=1)
    validation = arithmetic(2, offset=80, step=6, start=1)

    section("1. Track two runs of an experiment")
    run_ids = {}
    for k in (1, 2):
        program = await calculator(k=k, metrics=[pf.metrics.Accuracy(in_mask=["answer"])])
        monitor = pf.callbacks.Monitor(
            experiment_name="guide-09",
            run_name=f"few-shot-k{k}",
            tracking_uri=tracking_uri,
            tags={"guide": "09"},
        )
        checkpoint = pf.callbacks.ProgramCheckpoint(
            str(out / f"checkpoints-k{k}" / "calc-{epoch:02d}.json"), monitor="val_reward"
        )
        await program.fit(
            x,
            y,
            epochs=2,
            batch_size=3,
            validation_data=validation,
            callbacks=[checkpoint, monitor],
            seed=0,
            verbose=0,
        )
        run_ids[k] = monitor.run_id
        print(f"k={k}: MLflow run {monitor.run_id}")

    section("2. Read the runs back with MLflow's own client")
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    for run_id in run_ids.values():
        run = client.get_run(run_id)
        params = run.data.params
        print(f"run {run.info.run_name} ({run.info.status})")
        wanted = ("epochs", "batch_size", "seed", "compile.optimizer.class_name")
        print("  params      :", {key: params.get(key) for key in wanted})
        print("  optimizer k :", params.get("compile.optimizer.config.k"))
        print("  API key logged anywhere:", "sk-test" in str(params))
        print("  val_reward  :", [m.value for m in client.get_metric_history(run_id, "val_reward")])
        usage = {key: value for key, value in run.data.metrics.items() if key.startswith("usage/")}
        print("  usage       :", usage)
        print("  artifacts   :", [a.path for a in client.list_artifacts(run_id)])

    section("3. Compare runs")
    experiment = client.get_experiment_by_name("guide-09")
    runs = client.search_runs(
        [experiment.experiment_id], order_by=["metrics.val_reward DESC", "metrics.`usage/calls`"]
    )
    for run in runs:
        metrics = run.data.metrics
        print(
            f"  {run.info.run_name:<14} val_reward={metrics.get('val_reward')} "
            f"calls={metrics.get('usage/calls')}"
        )

    section("4. Browse it")
    print(f"mlflow ui --backend-store-uri {tracking_uri}")
    print("(the store is deleted at exit unless the guide runs with --out DIR)")


if __name__ == "__main__":
    asyncio.run(main())
