"""``Monitor``: track a fit as an MLflow run without ever slowing it down or breaking it.

This module holds the Keras hooks and the Monitor's decisions only: what to record and when
(params at train begin, metrics at batch/epoch ends, prompt versions on a new best checkpoint,
the program, best checkpoint and usage at train end) and how the run ends. Everything that
talks to MLflow runs on one worker thread per fit, in
:mod:`promptfit.observability.uploader`; the configuration-to-params flattening is in
:mod:`promptfit.observability.run_params` and the scrubbed artifact copies in
:mod:`promptfit.observability.artifacts`. Nothing the Monitor does can raise into ``fit``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from promptfit.callbacks._checkpoint_events import SavedCheckpoints, is_best
from promptfit.callbacks.callback import Callback
from promptfit.errors import ConfigurationError
from promptfit.observability.registry import (
    DEFAULT_BEST_ALIAS,
    DEFAULT_PROMPT_ALIAS,
    PromptJob,
    check_alias,
)
from promptfit.training.context import FitContext

if TYPE_CHECKING:
    from promptfit.observability.uploader import RunUploader

__all__ = ["Monitor"]

logger = logging.getLogger("promptfit")

_LOCAL_STORE_WAIT_S = 120.0


def _check_prompt_name(template: str) -> str:
    """``prompt_name`` must format with ``program`` and ``module`` (checked at construction)."""
    try:
        if not isinstance(template, str):
            raise TypeError(type(template).__name__)
        template.format(program="p", module="m")
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigurationError(
            f"Monitor: `prompt_name` must be a format string using only {{program}} and "
            f"{{module}}, e.g. 'shop.{{module}}'; got {template!r} ({exc})."
        ) from None
    return template


class Monitor(Callback):
    """Log a ``fit`` to MLflow: params, per-epoch metrics, the trained program, usage totals.

    What is logged: the fit parameters (``epochs``, ``batch_size``, ``seed``...), the compile
    configuration (reward, optimizer, metrics), each callback's and each language model's
    configuration (never an API key: known keys, credential-named fields and key-shaped strings
    are scrubbed), every epoch's logs as metrics with ``step=epoch``, optionally every batch's
    logs as ``batch/<name>`` with ``step=global step``, and at the end the program JSON, the
    best checkpoint (of those a ``ProgramCheckpoint`` of this fit announced through
    ``on_checkpoint_saved``, the one its manifest tags ``best``), LM usage totals as
    ``usage/<name>`` metrics, and the run status (``FINISHED``, ``FAILED``, ``KILLED`` when
    the fit is interrupted or cancelled). For MLflow 3's GenAI pages it also registers the
    trained prompts in the Prompt Registry, logs the training and validation data as run
    inputs and the trained program as a logged model (see the arguments below and
    :func:`promptfit.observability.load_prompts` to read prompts back).

    Tracking never hurts training: MLflow is only called from a worker thread, failures are
    detected in seconds and reported with ONE warning, unsent data is buffered and retried at
    each epoch end and at train end, and no exception from here reaches ``fit``. With
    :class:`~promptfit.callbacks.BackupAndRestore`, a resumed fit continues the same MLflow run
    (the run id is part of :meth:`state_dict`), so metric histories stay continuous. A fit that
    stops before its first epoch (e.g. ``BackupAndRestore`` refusing a backup that does not
    match) trained nothing and creates no run.

    You rarely create one: after :func:`promptfit.enable_observability`, every ``fit`` gets a
    Monitor automatically unless you pass your own.

    Args:
        experiment_name: MLflow experiment; defaults to the one given to
            ``enable_observability``, else ``"promptfit"``.
        run_name: Name of the run (MLflow picks a random one when ``None``).
        tracking_uri: Tracking store; defaults to the enabled one, else MLflow's configured
            URI, else the embedded ``sqlite:///mlflow.db`` in the working directory.
        log_batch_metrics: Also log each batch's running logs (``batch/reward``...).
        tags: Extra run tags.
        run_id: Continue this existing run instead of starting a new one. Its step numbers
            continue too: the first epoch of the fit is logged one step after the run's last
            logged epoch step (``batch/`` metrics likewise), read from MLflow's metric history.
        register_prompts: Register every trainable generator's prompt (instructions and
            few-shot examples) in MLflow's Prompt Registry: at the end of a successful fit
            (alias ``prompt_alias``) and on each new best a ``ProgramCheckpoint`` saves (alias
            ``best_alias``). Each version is tagged with the run id, the epoch, the monitored
            score and a content digest, so a resumed run reuses its versions instead of
            duplicating them. ``False`` turns it off.
        prompt_name: Registry name per generator: a format string with ``{program}`` and
            ``{module}`` (default ``"{program}.{module}"``; characters MLflow refuses become
            ``_``).
        prompt_alias: Alias moved to the version registered at the end of each fit.
        best_alias: Alias moved to the version of each new best checkpoint.
        log_datasets: Log the training and validation data as the run's inputs (pandas data
            sets with MLflow's digest, contexts ``training`` / ``validation``).
        log_model: At the end of a successful fit, log the trained program as an MLflow
            logged model of the run (the program JSON and the fit configuration as its
            artifacts, the final epoch's metrics linked to it).
        flush_timeout: Seconds one call of the last upload to a tracking server may go
            unanswered before ``on_train_end`` asks the server's ``/health`` (4 s when the
            call before got no answer): a server that answers it is slow, not hung, and is
            waited for until the run is ended, up to 2 minutes in all, so a slow or
            just-recovered server does not leave the run ``RUNNING``; what is still unsent
            when the wait ends is dropped, with one warning. A local store (SQLite file)
            cannot hang and is waited for until written, up to 2 minutes, because creating
            its database the first time can be slow.

    Example:
        ```python
        import promptfit as pf

        monitor = pf.callbacks.Monitor(experiment_name="arithmetic", run_name="k2",
                                       tags={"team": "search"})
        # await program.fit(x, y, epochs=3, callbacks=[monitor])
        # monitor.run_id -> the MLflow run to open in the UI
        ```
    """

    def __init__(
        self,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tracking_uri: str | None = None,
        log_batch_metrics: bool = False,
        tags: dict[str, Any] | None = None,
        run_id: str | None = None,
        flush_timeout: float = 10.0,
        register_prompts: bool = True,
        prompt_name: str = "{program}.{module}",
        prompt_alias: str = DEFAULT_PROMPT_ALIAS,
        best_alias: str = DEFAULT_BEST_ALIAS,
        log_datasets: bool = True,
        log_model: bool = True,
    ) -> None:
        super().__init__()
        self.register_prompts = bool(register_prompts)
        self.prompt_name = _check_prompt_name(prompt_name)
        self.prompt_alias = check_alias(prompt_alias, "prompt_alias")
        self.best_alias = check_alias(best_alias, "best_alias")
        self.log_datasets = bool(log_datasets)
        self.log_model = bool(log_model)
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.tracking_uri = tracking_uri
        self.log_batch_metrics = bool(log_batch_metrics)
        self.tags = dict(tags or {})
        self.flush_timeout = float(flush_timeout)
        self._initial_run_id = run_id
        self._loaded_run_id: str | None = None
        self._loaded_offsets: tuple[int, int] | None = None
        self._session: RunUploader | None = None
        self._link: Any = None
        self._link_token: Any = None
        self._warned_internal = False
        self._reset_fit()

    def _reset_fit(self) -> None:
        """Forget what the previous fit recorded (hook-side state; the outbox is per fit)."""
        self._current_epoch: int | None = None
        self._last_epoch = 0
        self._last_logs: dict[str, Any] = {}
        self._last_rows: list[tuple[str, float, int, int]] = []
        self._checkpoints = SavedCheckpoints()

    # -- public state ----------------------------------------------------------------------
    @property
    def run_id(self) -> str | None:
        """The MLflow run of the current (or last) fit, once created."""
        session = self._session
        if session is not None and session.run_id is not None:
            return session.run_id
        return self._loaded_run_id or self._initial_run_id

    def state_dict(self) -> dict[str, Any]:
        """``{"run_id": ...}``: what a resumed fit needs to continue the same run (plus the
        step offset of a continued ``run_id=`` run, so the resumed fit keeps numbering).

        If the run is being created right now, waits until its id is known so a backup taken
        at the first epoch end has it (a backup without the run id would make the resumed fit
        start a second run): for a server, while it answers (up to 5 s without an answer, 2
        minutes in all; a hung one never answers), for a local store until written (it cannot
        hang, but its database can take many seconds to create on a busy machine).
        """
        session = self._session
        state: dict[str, Any] = {}
        if session is not None and session.active:
            remote = session.uri.startswith(("http://", "https://"))
            silence = min(self.flush_timeout, 5.0) if remote else _LOCAL_STORE_WAIT_S
            session.wait_run_known(silence, cap=_LOCAL_STORE_WAIT_S)
            if session.epoch_offset or session.batch_offset:
                state["step_offsets"] = [session.epoch_offset, session.batch_offset]
        elif self._loaded_offsets is not None:
            state["step_offsets"] = list(self._loaded_offsets)
        return {"run_id": self.run_id, **state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        run_id = state.get("run_id") if isinstance(state, dict) else None
        if run_id:
            self._loaded_run_id = str(run_id)
            offsets = state.get("step_offsets")
            if (
                isinstance(offsets, list)
                and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            ):
                self._loaded_offsets = (offsets[0], offsets[1])

    def get_config(self) -> dict[str, Any]:
        return {
            "experiment_name": self.experiment_name,
            "run_name": self.run_name,
            "tracking_uri": self.tracking_uri,
            "log_batch_metrics": self.log_batch_metrics,
            "tags": dict(self.tags),
            "run_id": self._initial_run_id,
            "flush_timeout": self.flush_timeout,
            "register_prompts": self.register_prompts,
            "prompt_name": self.prompt_name,
            "prompt_alias": self.prompt_alias,
            "best_alias": self.best_alias,
            "log_datasets": self.log_datasets,
            "log_model": self.log_model,
        }

    # -- hooks (event loop: record and wake the worker, never call MLflow) -----------------
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        from promptfit.observability.store_check import check_store
        from promptfit.observability.tracking import resolve_tracking_uri

        self._reset_fit()
        try:
            uri = resolve_tracking_uri(self.tracking_uri)
            if not check_store(uri):
                self._session = None  # an unusable SQLite file: warned once, fit at full speed
                return
            self._session = self._open_session(uri)
        except Exception as exc:
            self._session = None
            self._internal_error(exc)

    def _open_session(self, uri: str) -> RunUploader:
        """Describe the fit (on the event loop, before it changes) and start its uploader."""
        from promptfit.observability.mlflow_backend import MLflowSpanBackend
        from promptfit.observability.run_outputs import dataset_jobs
        from promptfit.observability.run_params import (
            describe_fit,
            mlflow_key,
            model_params,
            params_and_tags,
        )
        from promptfit.observability.tracking import DEFAULT_EXPERIMENT_NAME, observability_settings
        from promptfit.observability.uploader import RunPlan, RunUploader

        settings = observability_settings() or {}
        program = self.program
        lms = program.all_language_models()
        secrets = [s for s in (getattr(lm, "_api_key", None) for lm in lms) if s]
        state = self.context
        callbacks = list(state.callbacks) if state is not None and state.callbacks else []
        payload = describe_fit(
            program=program, callbacks=callbacks, language_models=lms, fit_params=self.params,
            secrets=secrets,
        )  # fmt: skip
        params, tags = params_and_tags(payload, self.tags, secrets)
        datasets = []
        if self.log_datasets and isinstance(state, FitContext):
            datasets = dataset_jobs(
                mlflow_key(program.name), (state.xs, state.ys), (state.val_xs, state.val_ys)
            )
        # Bound here, on the fit's event loop before it starts any task, so exactly this fit's
        # traces are linked to the run (the worker fills the link once the run exists).
        self._link, self._link_token = MLflowSpanBackend.bind_run_link()
        plan = RunPlan(
            uri=uri,
            experiment=self.experiment_name
            or settings.get("experiment_name")
            or DEFAULT_EXPERIMENT_NAME,
            run_name=self.run_name,
            config_payload=payload,
            params=params,
            tags=tags,
            model_params=model_params(params),
            dataset_jobs=datasets,
            secrets=secrets,
            program_name=program.name,
            prompt_name=self.prompt_name,
            link=self._link,
        )
        session = RunUploader(plan)
        backend = session.span_backend()
        if backend is not None:
            backend.add_secrets(secrets)
        return session

    async def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # The run is created lazily here rather than in on_train_begin, so that a
        # BackupAndRestore placed after this callback has restored our run id first, and so
        # that a fit stopped before its first epoch (a refused resume) creates no run at all.
        self._current_epoch = epoch
        await self._start_run()

    async def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        await self._start_run()  # resumed mid-epoch: there was no on_epoch_begin

    async def _start_run(self) -> None:
        session = self._session
        if session is None or not session.active or session.kicked:
            return
        if self._loaded_run_id is not None:  # a fit resumed from a backup: same run, same steps
            session.resume_run_id = self._loaded_run_id
            session.epoch_offset, session.batch_offset = self._loaded_offsets or (0, 0)
        else:  # a run given by the user: a new fit, whose steps follow the run's last ones
            session.resume_run_id = self._initial_run_id
            session.continue_steps = self._initial_run_id is not None
        session.kick()
        if session.span_backend() is not None:
            # Traces are linked to the run only once it exists: give the worker a moment to
            # create it (awaited, so the event loop keeps running) before the first LM call.
            await session.wait_for_run(min(self.flush_timeout, 5.0))

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        session = self._session
        if session is None or not session.active or not self.log_batch_metrics:
            return
        try:
            state = self.context
            step = (
                batch
                if not isinstance(state, FitContext)
                else state.epoch * state.steps_per_epoch + batch
            )
            session.add_metrics(logs, step, prefix="batch/")
            if not session.down:
                session.kick()  # while the server is down, retry at epoch ends only
        except Exception as exc:
            self._internal_error(exc)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        session = self._session
        if session is None or not session.active:
            return
        try:
            self._last_rows = session.add_metrics(logs, epoch)
            self._last_epoch = epoch
            self._last_logs = dict(logs or {})
            session.kick()
        except Exception as exc:
            self._internal_error(exc)

    def on_checkpoint_saved(self, path: str, logs: dict[str, Any] | None = None) -> None:
        """The one source of checkpoints: remember the save, and on a new best (the save's
        manifest entry is tagged ``best``) register the prompts under ``best_alias``."""
        session = self._session
        if session is None:
            return
        try:
            entry = self._checkpoints.record(path)
            if not session.active or not self.register_prompts:
                return
            if entry is not None and is_best(entry):
                # Snapshot now: the optimizer changes the prompts in the next epoch.
                value = entry.get("value")
                score = float(value) if isinstance(value, int | float) else None
                self._add_prompt_job(session, score, entry.get("monitor"), [self.best_alias])
                session.kick()
        except Exception as exc:
            self._internal_error(exc)

    def on_train_error(self, error: BaseException) -> None:
        session = self._session
        if session is None:
            return
        try:
            cancelled = isinstance(error, KeyboardInterrupt | anyio.get_cancelled_exc_class())
        except Exception:
            cancelled = isinstance(error, KeyboardInterrupt)
        session.status = "KILLED" if cancelled else "FAILED"

    async def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        session = self._session
        if session is None:
            return
        if not session.active:  # abandoned after an internal error: only release the link
            self._detach()
            return
        try:
            if session.kicked:
                await self._finish(session)
            else:
                # Stopped before its first epoch (a refused resume, an error in another
                # callback's on_train_begin): nothing was trained, so no run is created and
                # nothing is uploaded.
                session.abandon()
        except Exception as exc:
            self._internal_error(exc)
        finally:
            session.active = False
            self._detach()
            self._loaded_run_id = None
            self._loaded_offsets = None

    async def _finish(self, session: RunUploader) -> None:
        """Record the end of the fit (program, final prompts, best checkpoint, usage) and
        wait for the upload that ends the run (bounded: see ``flush_timeout``)."""
        from promptfit.observability.run_params import mlflow_key

        program = self.program
        artifacts: list[tuple[Path, str]] = []
        try:
            program_file = session.staging.root / "program" / f"{mlflow_key(program.name)}.json"
            if session.status == "KILLED":
                program.save(program_file)  # cancelled: no awaiting in a cancelled scope
            else:
                await anyio.to_thread.run_sync(program.save, program_file)
            artifacts.append((program_file, "program"))
            if session.status == "FINISHED" and self.log_model:
                session.model_metrics = list(self._last_rows)
                session.model_file = program_file
        except Exception:
            logger.debug("Monitor could not save the program.", exc_info=True)
        if session.status == "FINISHED" and self.register_prompts:
            try:
                self._current_epoch = self._last_epoch
                score, key = self._final_score()
                self._add_prompt_job(session, score, key, [self.prompt_alias])
            except Exception:
                logger.debug("Monitor could not snapshot the prompts.", exc_info=True)
        best = self._checkpoints.best()
        if best is not None:
            artifacts.append((best, "checkpoints/best"))
        usage: dict[str, Any] = {}
        try:
            usage = program.usage_totals().as_dict()
        except Exception:
            logger.debug("Monitor could not read usage totals.", exc_info=True)
        session.add_metrics(usage, self._last_epoch, prefix="usage/")
        session.add_artifacts(artifacts)
        await session.close(self.flush_timeout)

    def _add_prompt_job(
        self, session: RunUploader, score: float | None, monitor: str | None, aliases: list[str]
    ) -> None:
        """Snapshot every trainable prompt now (event loop) for the worker to register."""
        from promptfit.observability.registry import trainable_prompts

        program = self.program
        values = {name: v.numpy() for name, v in trainable_prompts(program).items()}
        if not values:
            return
        epoch = self._current_epoch
        if epoch is None:  # resumed mid-epoch: no on_epoch_begin yet
            state = self.context
            epoch = state.epoch if isinstance(state, FitContext) else self._last_epoch
        job = PromptJob(values=values, epoch=epoch, score=score, monitor=monitor, aliases=aliases)
        session.add_prompt_job(job)

    def _final_score(self) -> tuple[float | None, str | None]:
        """The last epoch's value of the key the fit's checkpoints were ranked by (else
        ``val_reward``, else ``reward``), for the final version's ``promptfit.score`` tag."""
        from promptfit.observability.run_params import number

        for key in [self._checkpoints.monitored_key(), "val_reward", "reward"]:
            value = number(self._last_logs.get(key)) if key else None
            if value is not None:
                return value, key
        return None, None

    def _detach(self) -> None:
        from promptfit.observability.mlflow_backend import MLflowSpanBackend

        if self._link is not None:
            MLflowSpanBackend.unbind_run_link(self._link, self._link_token)
            self._link = self._link_token = None

    def _internal_error(self, exc: BaseException) -> None:
        from promptfit.observability.mlflow_backend import scrub_secrets

        logger.debug("Monitor error.", exc_info=exc)
        if not self._warned_internal:
            self._warned_internal = True
            detail = scrub_secrets(f"{type(exc).__name__}: {exc}")[:300]
            warnings.warn(
                f"promptfit: Monitor failed ({detail}); MLflow tracking is off for the rest "
                "of this fit. Training continues.",
                RuntimeWarning,
                stacklevel=3,
            )
        if self._session is not None:
            self._session.abandon()
