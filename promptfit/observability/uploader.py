"""The upload thread of a :class:`~promptfit.callbacks.Monitor`: the only code that calls MLflow.

Design, in one paragraph: the Monitor's hooks run on the event loop and only *record* what to
send (params, metrics, artifacts, prompt versions, data sets) into this outbox; one daemon
worker thread per fit drains it into MLflow. A call that fails leaves its data in the outbox,
the failure is reported once (one warning per outage, shared with the tracing backend, see
:func:`~promptfit.observability.mlflow_backend.report_unreachable`), and the outbox is retried
at every kick (epoch ends, train end), so data recorded while the server was down still lands
if it comes back before the run ends. Errors are classified: a connectivity problem is retried,
an item MLflow refuses for good is dropped (one warning), and a data set the server already
stored before its reply was lost is logged, not an outage (see
:mod:`promptfit.observability.upload_steps`). MLflow's HTTP retries are lowered while the
thread runs (see :func:`promptfit.observability.tracking.http_defaults`) so a dead server is
detected in seconds.
Nothing here can raise into ``fit``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from promptfit.observability import upload_steps as steps
from promptfit.observability.answering import AnsweringClient
from promptfit.observability.artifacts import StagingArea
from promptfit.observability.registry import PromptJob
from promptfit.observability.run_params import mlflow_key, number

__all__ = ["RunPlan", "RunUploader"]

logger = logging.getLogger("promptfit")

LOCAL_STORE_WAIT_S = 120.0
# The end of a fit waits at most this long for a tracking server that keeps answering (see
# RunUploader.close): long enough for a busy server to take a long outage's buffer, short
# enough that a server answering one call a minute cannot hold the program for ever.
FINAL_UPLOAD_CAP_S = 120.0
# A server that was down (or never answered) gets this long to answer its first call at the end.
DOWN_GRACE_S = 4.0
_MAX_BUFFERED_METRICS = 200_000

MetricRow = tuple[str, float, int, int]  # (key, value, timestamp ms, step)
DatasetJob = tuple[str, str, list[dict[str, Any]], list[str]]  # (context, name, rows, targets)


@dataclass
class RunPlan:
    """What the event loop prepared for one fit's run, before the worker starts.

    Attributes:
        uri: Tracking URI.
        experiment: Experiment name (created if missing).
        run_name: Name of a new run (MLflow picks one when ``None``).
        config_payload: The fit configuration, uploaded as ``promptfit/fit_config.json``.
        params: Run params (already flattened and scrubbed).
        tags: Run tags (already scrubbed).
        model_params: Params of the logged model.
        dataset_jobs: Data sets to log as run inputs.
        secrets: API keys never to write anywhere.
        program_name: The program's name (logged model name, prompt names).
        prompt_name: Registry name template with ``{program}`` and ``{module}``.
        link: The fit's trace link (:class:`~promptfit.observability.mlflow_backend.RunLink`),
            filled with the run once it exists.
    """

    uri: str
    experiment: str
    run_name: str | None
    config_payload: dict[str, Any]
    params: dict[str, str]
    tags: dict[str, str]
    model_params: dict[str, str]
    dataset_jobs: list[DatasetJob]
    secrets: list[str]
    program_name: str
    prompt_name: str = "{program}.{module}"
    link: Any = None


class RunUploader:
    """The outbox and worker thread of one fit (a fresh one per ``on_train_begin``).

    Keeping per-fit state here, not on the Monitor, means a worker still finishing a previous
    fit's upload never touches the next fit's data.

    The event loop calls :meth:`add_metrics`, :meth:`add_prompt_job`, :meth:`add_artifacts`,
    :meth:`kick`, :meth:`wait_for_run`, and once at the end :meth:`close` (or :meth:`abandon`);
    everything else runs on the worker thread.
    """

    def __init__(self, plan: RunPlan) -> None:
        from promptfit.observability.tracking import acquire_http_defaults

        self.plan = plan
        self.uri = plan.uri
        self.secrets = plan.secrets
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.first_attempt = threading.Event()
        self.params = dict(plan.params)
        self.tags = dict(plan.tags)
        self.dataset_jobs = list(plan.dataset_jobs)
        self.metrics: list[MetricRow] = []
        self.artifacts: list[tuple[Path, str]] = []
        self.prompt_jobs: list[PromptJob] = []
        self.linked_prompts: list[Any] = []
        self.model_file: Path | None = None
        self.model_metrics: list[MetricRow] = []
        self.model_id: str | None = None
        self.status = "FINISHED"
        # Set by the event loop before the first kick: an existing run to continue, and
        # whether its step numbers continue after the run's last logged step (a run given by
        # the user) or are already right (a run restored with the fit from a backup).
        self.resume_run_id: str | None = None
        self.continue_steps = False
        self.epoch_offset = 0
        self.batch_offset = 0
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.active = True
        self.kicked = False
        self.down = False
        self.succeeded = False
        self.disabled = False
        self.ended = False
        self.end_requested = False
        self.requested = 0
        self.completed = 0
        # When the call now waiting for the store began (None while no call is in flight: the
        # worker is busy with local work, not waiting), and whether the last call got an
        # answer (an error reply counts): set by AnsweringClient on the worker, read by
        # close() and wait_run_known().
        self.call_started_at: float | None = None
        self.answering = False
        self.client: Any = None
        self.staging = StagingArea(plan.secrets)
        self.warned_rejected = False  # one 'rejected' warning per fit
        acquire_http_defaults()
        self.thread = threading.Thread(
            target=self._work, name="promptfit-mlflow-monitor", daemon=True
        )
        self.thread.start()

    # -- event-loop side -------------------------------------------------------------------
    def add_metrics(
        self, logs: dict[str, Any] | None, step: int, prefix: str = ""
    ) -> list[MetricRow]:
        """Queue every numeric value of ``logs`` as a metric at ``step``; returns the rows."""
        now = int(time.time() * 1000)
        rows = [
            (mlflow_key(f"{prefix}{key}"), value, now, int(step))
            for key, raw in (logs or {}).items()
            if (value := number(raw)) is not None
        ]
        with self.lock:
            self.metrics.extend(rows)
            overflow = len(self.metrics) - _MAX_BUFFERED_METRICS
            if overflow > 0:  # a very long outage: keep the newest
                del self.metrics[:overflow]
        return rows

    def add_prompt_job(self, job: PromptJob) -> None:
        with self.lock:
            self.prompt_jobs.append(job)

    def add_artifacts(self, artifacts: Sequence[tuple[Path, str]]) -> None:
        with self.lock:
            self.artifacts.extend(artifacts)

    def kick(self) -> int:
        """Wake the worker for one more flush; returns the flush number to wait for."""
        with self.lock:
            self.kicked = True
            self.requested += 1
            target = self.requested
        self.wake.set()
        return target

    def wait_run_known(self, silence: float, cap: float) -> None:
        """Block until the run id is known or the first attempt to create it has ended.

        Gives up when a call has gone ``silence`` seconds without an answer and the server
        does not answer its health check either (hung, not slow), or after ``cap`` in all.
        Why the run id and not the whole first upload: a backup taken at the first epoch end
        needs only the id (without it the resumed fit starts a second run), while the first
        upload (params, data sets, prompt versions, artifacts) can take far longer than any
        fixed wait on a slow or loaded server.
        """
        from promptfit.observability.mlflow_backend import server_healthy

        if not self.kicked:
            return
        remote = self.uri.startswith(("http://", "https://"))
        started = since = time.monotonic()
        while self.run_id is None and not self.first_attempt.is_set():
            if time.monotonic() - started >= cap:
                return
            if self._silent_for(since) >= silence:
                if not remote or not server_healthy(self.uri):
                    return
                since = time.monotonic()  # alive, only slow: keep waiting
            self.first_attempt.wait(0.02)

    async def wait_for_run(self, timeout: float) -> None:
        """Until the run exists or the first attempt to create it has failed (or timeout)."""
        deadline = time.monotonic() + timeout
        while (
            self.kicked
            and self.run_id is None
            and not self.first_attempt.is_set()
            and time.monotonic() < deadline
        ):
            await anyio.sleep(0.01)

    def abandon(self) -> None:
        """Stop without sending anything more (the worker exits, no run is created)."""
        self.active = False
        self.disabled = True
        with self.lock:
            self.end_requested = True
        self.kick()

    async def close(self, flush_timeout: float) -> None:
        """Ask for the final flush (which ends the run with :attr:`status`) and wait for it.

        A cancelled fit (``KILLED``) never waits. A local store, which cannot hang but may take
        long to create its database, is waited for until written (at least 2 minutes).

        A tracking server is waited for as long as it is alive: when one call has gone
        ``flush_timeout`` seconds without an answer (4 s at most when the call before got
        none), the server's ``/health`` is asked; a server that answers it is slow, not hung,
        and the wait goes on, up to :data:`FINAL_UPLOAD_CAP_S` in all. Why not a
        fixed total: on a loaded machine a server that is back after an outage, or just slow,
        can need more than ``flush_timeout`` for the whole last upload (metrics, prompt
        versions, artifacts, the logged model, each several calls); cutting it off there left
        the run ``RUNNING`` for good. If the upload cannot finish, ONE warning says so.
        """
        with self.lock:
            self.end_requested = True
        target = self.kick()
        if self.status == "KILLED":
            return  # the worker finishes in the background; never delay a cancellation
        from promptfit.observability.mlflow_backend import server_healthy

        remote = self.uri.startswith(("http://", "https://"))
        started = since = time.monotonic()
        cap = max(flush_timeout, FINAL_UPLOAD_CAP_S if remote else LOCAL_STORE_WAIT_S)
        grace = self._grace(flush_timeout) if remote else cap
        while self.completed < target and self.thread.is_alive():
            if time.monotonic() - started >= cap:
                break
            if remote:
                grace = self._grace(flush_timeout)
            if self._silent_for(since) >= grace:
                # One call unanswered that long: hung, or only slow? A server that answers
                # its health check is alive (one call can be many requests on a busy server).
                if not remote or not await anyio.to_thread.run_sync(server_healthy, self.uri):
                    break
                since = time.monotonic()
            await anyio.sleep(0.02)
        if self.completed >= target:
            # Caught up: the worker is only releasing MLflow's HTTP settings and its temp dir;
            # let it, so fit returns with the environment restored.
            await anyio.to_thread.run_sync(self.thread.join, 2.0)
        elif not self.disabled and self.thread.is_alive():
            self._report_cut_off(started, since, grace, remote)
        with self.lock:
            unsent = len(self.metrics) + len(self.params) + len(self.artifacts)
        if unsent and not self.disabled:
            logger.info("Monitor: %d items could not be sent to MLflow before the end.", unsent)

    def _grace(self, flush_timeout: float) -> float:
        """Seconds without an answer after which ``close`` gives up on a tracking server:
        ``flush_timeout`` while its last call got an answer, else at most 4 s."""
        return flush_timeout if self.answering else min(flush_timeout, DOWN_GRACE_S)

    def _silent_for(self, since: float) -> float:
        """Seconds the store has left the current call unanswered, counted from ``since`` at
        the earliest; 0 while no call is in flight (local work is not the store's silence)."""
        pending = self.call_started_at
        return 0.0 if pending is None else time.monotonic() - max(since, pending)

    def _report_cut_off(self, started: float, since: float, grace: float, remote: bool) -> None:
        """The end of the fit stopped waiting with the last upload unfinished: one warning."""
        from promptfit.observability.mlflow_backend import redact_uri, report_unreachable

        waited = time.monotonic() - started
        if remote and self._silent_for(since) >= grace:
            # Said now, not from the worker after fit has returned (or never, at exit); one
            # warning per outage, shared with the rest of the outage's reports.
            report_unreachable(self.uri, f"no answer within {grace:.0f}s")
            return
        steps.warn_from_worker(
            f"promptfit: the Monitor's last upload to {redact_uri(self.uri)} was still running "
            f"after {waited:.0f}s; the run stays RUNNING and what was not sent is dropped. "
            "Training results are unaffected; pass Monitor(flush_timeout=...) to wait longer."
        )

    def span_backend(self) -> Any:
        """The installed MLflow tracing backend if it writes to this run's store, else None."""
        from promptfit.observability.mlflow_backend import MLflowSpanBackend
        from promptfit.observability.spans import span_backend

        backend = span_backend()
        if isinstance(backend, MLflowSpanBackend) and backend.tracking_uri == self.uri:
            return backend
        return None

    # -- worker thread (the only place that calls MLflow) ----------------------------------
    def _work(self) -> None:
        from promptfit.observability.tracking import release_http_defaults

        try:
            try:  # import MLflow and open the store now, overlapping the first epoch
                self._client()
            except Exception:
                logger.debug("Monitor could not open %s yet.", self.uri, exc_info=True)
            while True:
                self.wake.wait()
                self.wake.clear()
                with self.lock:
                    target = self.requested
                    final = self.end_requested
                try:
                    if not self.disabled:
                        self._flush()
                except BaseException:  # never let the worker die silently mid-fit
                    logger.debug("Monitor flush crashed.", exc_info=True)
                finally:
                    self.first_attempt.set()
                with self.lock:
                    self.completed = max(self.completed, target)
                    caught_up = self.completed >= self.requested
                if final and (self.ended or self.disabled or caught_up):
                    break
        finally:
            self.first_attempt.set()
            release_http_defaults()
            self.staging.cleanup()

    def _flush(self) -> None:
        from promptfit.observability.mlflow_backend import (
            mark_reachable,
            report_unreachable,
            scrub_secrets,
        )

        started_at = time.monotonic()
        try:
            client = self._client()
            if self.run_id is None:
                self._start_run(client)
            steps.send_params(self, client)
            steps.send_datasets(self, client)
            steps.send_metrics(self, client)
            steps.send_prompts(self, client)
            steps.send_artifacts(self, client)
            with self.lock:
                final = self.end_requested
            if final:
                steps.send_model(self, client)
            with self.lock:
                done = self.end_requested and not (
                    self.metrics
                    or self.params
                    or self.tags
                    or self.artifacts
                    or self.prompt_jobs
                    or self.dataset_jobs
                    or self.model_file
                )
            if done and not self.ended:
                client.set_terminated(self.run_id, status=self.status)
                self.ended = True
        except Exception as exc:
            if steps.is_permanent(exc):
                self.disabled = True
                detail = scrub_secrets(str(exc), self.secrets)[:300]
                steps.warn_from_worker(
                    f"promptfit: MLflow rejected the Monitor's run ({detail}); tracking is off "
                    "for this fit. Training continues."
                )
                return
            self.down = True
            self.answering = False
            report_unreachable(self.uri, exc, started_at=started_at)
            return
        if self.down:
            logger.info("MLflow tracking is reachable again; buffered run data was sent.")
        self.down = False
        self.succeeded = True
        mark_reachable(self.uri)

    def _client(self) -> Any:
        if self.client is None:
            from mlflow import MlflowClient

            self.client = AnsweringClient(MlflowClient(tracking_uri=self.uri), self)
        return self.client

    def _start_run(self, client: Any) -> None:
        from mlflow.exceptions import MlflowException

        from promptfit.observability.tracking import get_or_create_experiment

        experiment_id = get_or_create_experiment(client, self.plan.experiment, self.uri)
        run = None
        if self.resume_run_id:
            try:
                run = client.get_run(self.resume_run_id)
            except MlflowException as exc:
                if not steps.is_permanent(exc):
                    raise
                logger.info("MLflow run %s not found; starting a new run.", self.resume_run_id)
            if run is not None and run.info.lifecycle_stage == "deleted":
                run = None
            if run is not None:
                if self.continue_steps:
                    self.epoch_offset, self.batch_offset = _next_steps(client, run)
                if run.info.status != "RUNNING":
                    client.update_run(run.info.run_id, status="RUNNING")
                existing = run.data.params
                with self.lock:  # params are immutable in MLflow: keep the first values
                    self.params = {k: v for k, v in self.params.items() if k not in existing}
                experiment_id = run.info.experiment_id
        if run is None:
            run = client.create_run(experiment_id, run_name=self.plan.run_name)
        backend = self.span_backend()
        if backend is not None and self.active:  # before run_id is set: wait_for_run polls it
            backend.attach_run(self.plan.link, run.info.run_id, str(experiment_id))
        self.experiment_id = str(experiment_id)
        self.run_id = run.info.run_id
        path = self.staging.root / "promptfit" / "fit_config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.plan.config_payload, indent=2, default=str)
        path.write_text(text, encoding="utf-8")
        with self.lock:
            self.artifacts.insert(0, (path, "promptfit"))

    def shifted(self, row: MetricRow) -> MetricRow:
        """``row`` at its step in the run (after the steps of a continued run)."""
        key, value, timestamp, step = row
        offset = self.batch_offset if key.startswith("batch/") else self.epoch_offset
        return (key, value, timestamp, step + offset)


def _next_steps(client: Any, run: Any) -> tuple[int, int]:
    """``(epoch step, batch step)`` at which a continued run's new points start: one past the
    last step in the run's metric histories (epoch metrics and ``batch/`` metrics apart, as
    their steps count different things)."""
    last_epoch = last_batch = -1
    for key in run.data.metrics:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        if not steps:
            continue
        if key.startswith("batch/"):
            last_batch = max(last_batch, *steps)
        else:
            last_epoch = max(last_epoch, *steps)
    return last_epoch + 1, last_batch + 1
