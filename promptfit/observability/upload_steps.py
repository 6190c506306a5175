"""What one flush of a Monitor's upload thread sends, kind by kind, and how errors are judged.

Each ``send_*`` function drains one part of a :class:`~promptfit.observability.uploader.
RunUploader`'s outbox (params and tags, metrics, data sets, prompt versions, artifacts, the
logged model) on the worker thread, removing only what was sent or refused for good. Errors
are judged here, the same way for every kind: a connectivity problem is re-raised (the whole
flush is retried later and the outage reported once), an item MLflow refuses for good is
dropped with one warning, and a data set the server already stored (its reply was lost) is
logged, not an outage.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from typing import TYPE_CHECKING, Any

from promptfit.observability.run_params import mlflow_key

if TYPE_CHECKING:
    from promptfit.observability.uploader import RunUploader

__all__ = [
    "drop_on_permanent",
    "is_permanent",
    "send_artifacts",
    "send_datasets",
    "send_metrics",
    "send_model",
    "send_params",
    "send_prompts",
    "warn_from_worker",
]

logger = logging.getLogger("promptfit")

# MLflow batch limits (mlflow.utils.validation): 100 params/tags and 1000 metrics per call.
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
# Errors retrying cannot fix: drop the offending item instead of retrying it forever.
_PERMANENT_CODES = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    "RESOURCE_DOES_NOT_EXIST",
    "BAD_REQUEST",
    "INVALID_STATE",
}


def is_permanent(exc: BaseException) -> bool:
    """Whether MLflow refused the call for good (retrying the same request cannot help)."""
    return getattr(exc, "error_code", None) in _PERMANENT_CODES


def warn_from_worker(message: str) -> None:
    """Warn from the upload thread without letting the warning become the thread's error.

    Where warnings are errors (``-W error``, a test suite's filters), ``warnings.warn`` raises;
    inside the worker that exception would be taken for a failed upload and reported as the
    server being unreachable, a second, false warning. The message is logged instead.
    """
    try:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    except Warning:
        logger.warning(message)


def send_params(up: RunUploader, client: Any) -> None:
    from mlflow.entities import Param, RunTag

    while True:
        with up.lock:
            params = list(up.params.items())[:_PARAMS_PER_BATCH]
            tags = list(up.tags.items())[:_PARAMS_PER_BATCH]
        if not params and not tags:
            return
        try:
            client.log_batch(
                up.run_id,
                params=[Param(k, v) for k, v in params],
                tags=[RunTag(k, v) for k, v in tags],
            )
        except Exception as exc:
            if not is_permanent(exc):
                raise
            _send_one_by_one(up, client, params, tags)
        with up.lock:
            for key, _ in params:
                up.params.pop(key, None)
            for key, _ in tags:
                up.tags.pop(key, None)


def _send_one_by_one(
    up: RunUploader, client: Any, params: list[tuple[str, str]], tags: list[tuple[str, str]]
) -> None:
    """After MLflow refused a whole batch: send each item alone so one bad item (a param the
    run already has with another value, a key MLflow refuses) costs only itself."""
    for kind, items, send in (("param", params, client.log_param), ("tag", tags, client.set_tag)):
        for key, value in items:
            try:
                send(up.run_id, key, value)
            except Exception as exc:
                if not is_permanent(exc):
                    raise
                _rejected(up, kind, key, exc)


def _rejected(up: RunUploader, kind: str, key: str, exc: Exception) -> None:
    """One item MLflow refused for good is left out: logged, and the fit's first one warned."""
    from promptfit.observability.mlflow_backend import scrub_secrets

    detail = scrub_secrets(str(exc), up.secrets)[:300]
    logger.debug("MLflow rejected %s %r: %s", kind, key, detail)
    if not up.warned_rejected:
        up.warned_rejected = True
        warn_from_worker(
            f"promptfit: MLflow rejected the Monitor's {kind} {key!r} ({detail}); it is left "
            "out of the run, the rest is tracked. Training continues."
        )


def send_metrics(up: RunUploader, client: Any) -> None:
    from mlflow.entities import Metric

    while True:
        with up.lock:
            rows = up.metrics[:_METRICS_PER_BATCH]
        if not rows:
            return
        try:
            client.log_batch(up.run_id, metrics=[Metric(*up.shifted(r)) for r in rows])
        except Exception as exc:
            if not is_permanent(exc):
                raise
            for row in rows:
                try:
                    client.log_batch(up.run_id, metrics=[Metric(*up.shifted(row))])
                except Exception as inner:
                    if not is_permanent(inner):
                        raise
                    _rejected(up, "metric", row[0], inner)
        with up.lock:
            del up.metrics[: len(rows)]  # only appended at the end meanwhile


def drop_on_permanent(up: RunUploader, what: str, exc: Exception) -> None:
    """A registry/inputs/model call MLflow refused for good: warn once, keep tracking.

    An API this MLflow version lacks (ImportError, AttributeError, TypeError...) is just as
    permanent; only what looks like a connectivity problem is re-raised, to be retried.
    """
    from promptfit.observability.mlflow_backend import scrub_secrets

    unsupported = isinstance(exc, ImportError | AttributeError | TypeError | ValueError)
    if not is_permanent(exc) and not unsupported:
        raise exc
    detail = scrub_secrets(str(exc), up.secrets)[:300]
    logger.debug("MLflow rejected %s: %s", what, detail)
    if not up.warned_rejected:
        up.warned_rejected = True
        warn_from_worker(
            f"promptfit: MLflow rejected the Monitor's {what} ({detail}); the run's params "
            "and metrics are still tracked. Training continues."
        )


def send_datasets(up: RunUploader, client: Any) -> None:
    """Log the fit's data sets as run inputs, exactly once.

    Logging inputs is not idempotent under a lost reply: when a request times out after the
    server stored the data set, the retry can race the first insert and fail on MLflow's
    UNIQUE constraint (seen as "too many 500 error responses" by the client). Before treating
    any failure as an outage or a rejection, ask the run whether it already has every data set
    (same name and digest): if it has, the upload succeeded.
    """
    from promptfit.observability.run_outputs import log_datasets, missing_datasets

    with up.lock:
        jobs = list(up.dataset_jobs)
    if not jobs:
        return
    try:
        log_datasets(client, str(up.run_id), jobs)
    except Exception as exc:
        try:
            stored = not missing_datasets(client, str(up.run_id), jobs)
        except Exception:
            stored = False  # cannot tell (e.g. the server is down): judge the first error
        if stored:
            logger.debug("MLflow already had the data sets (%s); taken as logged.", exc)
        else:
            drop_on_permanent(up, "data sets", exc)
    with up.lock:
        del up.dataset_jobs[: len(jobs)]


def send_prompts(up: RunUploader, client: Any) -> None:
    from promptfit.observability.registry import (
        link_prompts_to_run,
        prompt_registry_name,
        register_prompt_version,
    )

    program_name = up.plan.program_name
    while True:
        with up.lock:
            if not up.prompt_jobs:
                return
            job = up.prompt_jobs[0]
        try:
            versions = []
            for module, value in job.values.items():
                name = prompt_registry_name(
                    up.plan.prompt_name.format(program=program_name, module=module)
                )
                version = register_prompt_version(
                    client, name, value, run_id=str(up.run_id), epoch=job.epoch,
                    score=job.score, monitor=job.monitor, program_name=program_name,
                    module_name=module,
                )  # fmt: skip
                for alias in job.aliases:
                    client.set_prompt_alias(name, alias, int(version.version))
                versions.append(version)
            link_prompts_to_run(client, str(up.run_id), versions)
            up.linked_prompts.extend(versions)
        except Exception as exc:
            drop_on_permanent(up, "prompt registration", exc)
        with up.lock:
            if up.prompt_jobs and up.prompt_jobs[0] is job:
                up.prompt_jobs.pop(0)


def send_model(up: RunUploader, client: Any) -> None:
    from promptfit.observability.run_outputs import create_program_model, log_program_model

    source = up.model_file
    if source is None:
        return
    try:
        folder = up.staging.root / "model"
        folder.mkdir(parents=True, exist_ok=True)
        files = [folder / source.name]
        shutil.copy2(source, files[0])
        config = up.staging.root / "promptfit" / "fit_config.json"
        if config.exists():
            files.append(folder / config.name)
            shutil.copy2(config, files[-1])
        for file in files:
            up.staging.stage(file)  # scrubs in place (the folder is ours)
        # The run's own points (same key, value, timestamp, step): linked, not duplicated.
        metrics = [up.shifted(row) for row in up.model_metrics]
        if up.model_id is None:
            up.model_id = create_program_model(
                client, experiment_id=str(up.experiment_id), run_id=str(up.run_id),
                name=mlflow_key(up.plan.program_name),
                params=dict(list(up.plan.model_params.items())[:100]),
            )  # fmt: skip
        log_program_model(
            client, model_id=up.model_id, run_id=str(up.run_id), files=files,
            metrics=metrics,
        )  # fmt: skip
    except (FileNotFoundError, PermissionError) as exc:
        logger.debug("Monitor skipped the logged model: %s", exc)
    except Exception as exc:
        drop_on_permanent(up, "logged model", exc)
    up.model_file = None


def send_artifacts(up: RunUploader, client: Any) -> None:
    while True:
        with up.lock:
            if not up.artifacts:
                return
            local, artifact_path = up.artifacts[0]
        try:
            staged = up.staging.stage(local)
            if staged.is_dir():
                client.log_artifacts(up.run_id, str(staged), f"{artifact_path}/{staged.name}")
            else:
                client.log_artifact(up.run_id, str(staged), artifact_path)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            logger.debug("Monitor skipped artifact %s: %s", local, exc)
        except Exception as exc:
            if not is_permanent(exc):
                raise
            logger.debug("MLflow rejected artifact %s: %s", local, exc)
        with up.lock:
            if up.artifacts and up.artifacts[0][0] == local:
                up.artifacts.pop(0)
