"""MLflow 3 run inputs and outputs for a fit: its data sets, and the program as a logged model.

Called only from the Monitor's worker thread (never the event loop), with the Monitor's own
``MlflowClient``, so a fit that targets a non-default store never touches MLflow's global
tracking URI. Each function is idempotent for a resumed run: MLflow keeps one input per
(data set name, digest) and the logged model is created once per fit and reused on retries.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "create_program_model",
    "dataset_jobs",
    "dataset_rows",
    "log_datasets",
    "log_program_model",
    "missing_datasets",
]

MODEL_TYPE = "promptfit-program"
_MAX_DATASET_ROWS = 100_000


def _row(value: Any) -> dict[str, Any]:
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    if not isinstance(value, Mapping):
        return {"value": value}
    return dict(value)


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def dataset_rows(xs: Sequence[Any], ys: Sequence[Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """One flat row per example (inputs' fields, then the expected outputs' fields) and the
    target column names. An output field that clashes with an input field is ``expected.<f>``.

    Runs on the event loop at train begin (a ``model_dump`` per row), so the rows are the data
    the fit started with even if the caller mutates its lists later.
    """
    rows: list[dict[str, Any]] = []
    targets: dict[str, None] = {}
    for x, y in zip(xs[:_MAX_DATASET_ROWS], ys[:_MAX_DATASET_ROWS], strict=False):
        row = {str(k): _cell(v) for k, v in _row(x).items()}
        for key, value in _row(y).items():
            column = str(key) if str(key) not in row else f"expected.{key}"
            row[column] = _cell(value)
            targets[column] = None
        rows.append(row)
    return rows, list(targets)


def dataset_jobs(
    prefix: str,
    train: tuple[Sequence[Any], Sequence[Any]],
    validation: tuple[Sequence[Any], Sequence[Any]],
) -> list[tuple[str, str, list[dict[str, Any]], list[str]]]:
    """``(context, name, rows, targets)`` for the training and validation data of a fit (an
    empty one is left out), named ``<prefix>-train`` and ``<prefix>-validation``."""
    jobs = []
    for context, suffix, (xs, ys) in (
        ("training", "train", train),
        ("validation", "validation", validation),
    ):
        rows, targets = dataset_rows(xs, ys)
        if rows:
            jobs.append((context, f"{prefix}-{suffix}", rows, targets))
    return jobs


def _dataset_inputs(
    datasets: Sequence[tuple[str, str, list[dict[str, Any]], list[str]]],
) -> list[Any]:
    """MLflow ``DatasetInput`` entities of ``(context, name, rows, targets)`` data sets."""
    import mlflow.data
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    for context, name, rows, targets in datasets:
        if not rows:
            continue
        frame = pd.DataFrame(rows)
        target = targets[0] if len(targets) == 1 else None
        dataset = mlflow.data.from_pandas(frame, name=name, targets=target)
        inputs.append(
            DatasetInput(dataset._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)])
        )
    return inputs


def log_datasets(
    client: Any, run_id: str, datasets: Sequence[tuple[str, str, list[dict[str, Any]], list[str]]]
) -> None:
    """Log ``(context, name, rows, targets)`` data sets as the run's inputs.

    Uses ``mlflow.data.from_pandas`` (digest computed by MLflow from the content; source: the
    code that ran the fit, as for any in-memory data frame) and the ``mlflow.data.context``
    input tag (``training`` / ``validation``) that the run page's Datasets panel shows.
    """
    inputs = _dataset_inputs(datasets)
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


def missing_datasets(
    client: Any, run_id: str, datasets: Sequence[tuple[str, str, list[dict[str, Any]], list[str]]]
) -> list[str]:
    """Names of the data sets that are not inputs of the run yet (same name and digest).

    Why: after a request whose reply was lost, this tells whether the server stored it.
    """
    run = client.get_run(run_id)
    have = {
        (item.dataset.name, item.dataset.digest)
        for item in (run.inputs.dataset_inputs if run.inputs is not None else [])
    }
    return [
        entity.dataset.name
        for entity in _dataset_inputs(datasets)
        if (entity.dataset.name, entity.dataset.digest) not in have
    ]


def create_program_model(
    client: Any, *, experiment_id: str, run_id: str, name: str, params: Mapping[str, str]
) -> str:
    """Create the (pending) logged model of a fit's program; returns its model id."""
    model = client.create_logged_model(
        experiment_id,
        name=name,
        source_run_id=run_id,
        params=dict(params),
        tags={"promptfit.program": name},
        model_type=MODEL_TYPE,
    )
    return str(model.model_id)


def log_program_model(
    client: Any,
    *,
    model_id: str,
    run_id: str,
    files: Sequence[Path],
    metrics: Sequence[tuple[str, float, int, int]],
) -> None:
    """Fill and finalize the logged model made by :func:`create_program_model`.

    The model's artifacts are ``files`` (the program JSON and the fit configuration, in one
    directory), it becomes an output of the run at the metrics' step, and ``metrics`` (the
    final epoch's ``(key, value, timestamp, step)`` points, as already logged to the run) are
    logged again with the model id, as ``mlflow.<flavor>.log_model`` does: same key, value,
    timestamp and step, so the run's history gains no point and the "Logged models"
    comparison shows them. Safe to repeat after a failure part-way.
    """
    from mlflow.entities import LoggedModelOutput, Metric

    folders = {file.parent for file in files}
    if len(folders) > 1:
        raise ValueError("log_program_model: files must share one directory")
    for folder in folders:
        client.log_model_artifacts(model_id, str(folder))
    step = max((row[3] for row in metrics), default=0)
    client.log_outputs(run_id, models=[LoggedModelOutput(model_id, step)])
    rows = [Metric(k, v, ts, s, model_id=model_id, run_id=run_id) for k, v, ts, s in metrics]
    if rows:
        client.log_batch(run_id, metrics=rows)
    client.finalize_logged_model(model_id, "READY")
