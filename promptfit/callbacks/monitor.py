"""``Monitor``: track a fit as an MLflow run without ever slowing it down or breaking it.

Design, in one paragraph: hooks run on the event loop and only *record* what to send (params,
metrics, artifacts) into an in-memory outbox; one daemon worker thread per fit drains the outbox
into MLflow. A call that fails leaves its data in the outbox, the failure is reported once (one
warning per outage, shared with the tracing backend), and the outbox is retried at every epoch
end and at train end (bounded by ``flush_timeout``), so metrics logged while the server was
down still land if it comes back before the run ends. MLflow's HTTP retries are lowered while
a Monitor is active (see :func:`promptfit.observability.tracking.http_defaults`) so a dead server
is detected in seconds, not minutes. Nothing the Monitor does can raise into ``fit``.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import re
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import anyio

from promptfit.callbacks.callback import Callback
from promptfit.errors import ConfigurationError
from promptfit.observability.registry import (
    DEFAULT_BEST_ALIAS,
    DEFAULT_PROMPT_ALIAS,
    PromptJob,
    check_alias,
)
from promptfit.training.context import FitContext

__all__ = ["Monitor"]

logger = logging.getLogger("promptfit")

# MLflow batch limits (mlflow.utils.validation): 100 params/tags and 1000 metrics per call.
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
_MAX_PARAM_VALUE = 6000
_MAX_KEY = 250
_MAX_BUFFERED_METRICS = 200_000
_LOCAL_STORE_WAIT_S = 120.0
# Errors retrying cannot fix: drop the offending item instead of retrying it forever.
_PERMANENT_CODES = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    "RESOURCE_DOES_NOT_EXIST",
    "BAD_REQUEST",
    "INVALID_STATE",
}
_BAD_KEY_CHARS = re.compile(r"[^\w.\- /]")


def _key(name: str) -> str:
    """A valid MLflow param/metric key (letters, digits, ``_ - . / space``; no path tricks)."""
    key = _BAD_KEY_CHARS.sub("_", str(name)).strip("/ ")
    key = re.sub(r"/{2,}", "/", key)
    parts = ["_" if part in (".", "..") else part for part in key.split("/")]
    return "/".join(parts)[:_MAX_KEY] or "_"


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    elif isinstance(value, list | tuple | dict):
        out[prefix] = json.dumps(value, default=str, ensure_ascii=False)
    else:
        out[prefix] = "None" if value is None else str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real):
        result = float(value)
        return result if not math.isnan(result) else None
    return None


def _is_permanent(exc: BaseException) -> bool:
    return getattr(exc, "error_code", None) in _PERMANENT_CODES


def _warn_from_worker(message: str) -> None:
    """Warn from the upload thread without letting the warning become the thread's error.

    Where warnings are errors (``-W error``, a test suite's filters), ``warnings.warn`` raises;
    inside the worker that exception would be taken for a failed upload and reported as the
    server being unreachable, a second, false warning. The message is logged instead.
    """
    try:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    except Warning:
        logger.warning(message)


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


def _new_best(context: Any, path: str) -> tuple[float | None, str | None] | None:
    """``(score, monitor)`` if ``path`` is the best checkpoint of a ProgramCheckpoint of the fit
    (it just improved), else ``None``."""
    state = context
    callbacks = list(state.callbacks) if state is not None and state.callbacks else []
    saved = Path(path).resolve()
    for callback in callbacks:
        if type(callback).__name__ != "ProgramCheckpoint":
            continue
        best_path = getattr(callback, "best_path", None)
        directory = getattr(callback, "directory", None)
        if best_path and directory is not None and (Path(directory) / best_path).resolve() == saved:
            best = getattr(callback, "best", None)
            return (None if best is None else float(best), getattr(callback, "monitor", None))
    return None


class Monitor(Callback):
    """Log a ``fit`` to MLflow: params, per-epoch metrics, the trained program, usage totals.

    What is logged: the fit parameters (``epochs``, ``batch_size``, ``seed``...), the compile
    configuration (reward, optimizer, metrics), each callback's and each language model's
    configuration (never an API key: known keys, credential-named fields and key-shaped strings
    are scrubbed), every epoch's logs as metrics with ``step=epoch``, optionally every batch's
    logs as ``batch/<name>`` with ``step=global step``, and at the end the program JSON, the
    best checkpoint (when a ``ProgramCheckpoint`` runs), LM usage totals as ``usage/<name>``
    metrics, and the run status (``FINISHED``, ``FAILED``, ``KILLED``). For MLflow 3's GenAI
    pages it also registers the trained prompts in the Prompt Registry, logs the training and
    validation data as run inputs and the trained program as a logged model (see the
    arguments below and :func:`promptfit.observability.load_prompts` to read prompts back).

    Tracking never hurts training: MLflow is only called from a worker thread, failures are
    detected in seconds and reported with ONE warning, unsent data is buffered and retried at
    each epoch end and at train end, and no exception from here reaches ``fit``. With
    :class:`~promptfit.callbacks.BackupAndRestore`, a resumed fit continues the same MLflow run
    (the run id is part of :meth:`state_dict`), so metric histories stay continuous.

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
        run_id: Continue this existing run instead of starting a new one.
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
        flush_timeout: Most seconds ``on_train_end`` waits for the last upload to a tracking
            server (data still unsent after that is dropped, with the warning already shown;
            a server that is down or never answered gets 4 s). A local store (SQLite file)
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
        self._session: _Session | None = None
        self._warned_internal = False

    # -- public state ----------------------------------------------------------------------
    @property
    def run_id(self) -> str | None:
        """The MLflow run of the current (or last) fit, once created."""
        session = self._session
        if session is not None and session.run_id is not None:
            return session.run_id
        return self._loaded_run_id or self._initial_run_id

    def state_dict(self) -> dict[str, Any]:
        """``{"run_id": ...}``: what a resumed fit needs to continue the same run.

        If the run is being created right now (first upload in flight), waits for it so a
        backup taken at the first epoch end already knows the run id: briefly for a server
        (which may hang), until written for a local store (which cannot hang, but whose
        database can take many seconds to create on a busy machine; a backup without the run
        id would make the resumed fit start a second run).
        """
        session = self._session
        if session is not None and session.active:
            remote = session.uri.startswith(("http://", "https://"))
            wait = min(self.flush_timeout, 5.0) if remote else _LOCAL_STORE_WAIT_S
            session.wait_first_attempt(wait)
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        run_id = state.get("run_id") if isinstance(state, dict) else None
        if run_id:
            self._loaded_run_id = str(run_id)

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

        try:
            if not check_store(resolve_tracking_uri(self.tracking_uri)):
                self._session = None  # an unusable SQLite file: warned once, fit at full speed
                return
            self._session = _Session(self)
        except Exception as exc:
            self._session = None
            self._internal_error(exc)

    async def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # The run is created lazily here rather than in on_train_begin, so that a
        # BackupAndRestore placed after this callback has restored our run id first.
        if self._session is not None:
            self._session.current_epoch = epoch
        await self._start_run()

    async def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        await self._start_run()  # resumed mid-epoch: there was no on_epoch_begin

    async def _start_run(self) -> None:
        session = self._session
        if session is None or not session.active or session.kicked:
            return
        session.kick()
        if session.backend() is not None:
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
            session.last_rows = session.add_metrics(logs, epoch)
            session.last_epoch = epoch
            session.last_logs = dict(logs or {})
            session.kick()
        except Exception as exc:
            self._internal_error(exc)

    def on_checkpoint_saved(self, path: str, logs: dict[str, Any] | None = None) -> None:
        session = self._session
        if session is None:
            return
        session.saved_checkpoints.append(str(path))
        if not session.active or not self.register_prompts:
            return
        try:
            best = _new_best(self.context, path)
            if best is not None:  # snapshot now: the optimizer changes the prompts next epoch
                session.add_prompt_job(best[0], best[1], [self.best_alias])
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
            session.detach()
            return
        try:
            await session.finish(self.flush_timeout)
        except Exception as exc:
            self._internal_error(exc)
        finally:
            session.active = False
            session.detach()
            self._loaded_run_id = None

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


class _Session:
    """The outbox and worker thread of one fit (a fresh one per ``on_train_begin``).

    Keeping per-fit state here, not on the Monitor, means a worker still finishing a previous
    fit's upload never touches the next fit's data.
    """

    def __init__(self, monitor: Monitor) -> None:
        from promptfit.observability.tracking import (
            DEFAULT_EXPERIMENT_NAME,
            acquire_http_defaults,
            observability_settings,
            resolve_tracking_uri,
        )

        self.monitor = monitor
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.first_attempt = threading.Event()
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.metrics: list[tuple[str, float, int, int]] = []
        self.artifacts: list[tuple[Path, str]] = []
        self.status = "FINISHED"
        self.saved_checkpoints: list[str] = []
        self.last_epoch = 0
        self.current_epoch: int | None = None
        self.last_logs: dict[str, Any] = {}
        self.last_rows: list[tuple[str, float, int, int]] = []
        self.prompt_jobs: list[PromptJob] = []
        self.linked_prompts: list[Any] = []
        self.dataset_jobs: list[tuple[str, str, list[dict[str, Any]], list[str]]] = []
        self.model_file: Path | None = None
        self.model_id: str | None = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.active = False
        self.kicked = False
        self.down = False
        self.succeeded = False
        self.disabled = False
        self.ended = False
        self.end_requested = False
        self.requested = 0
        self.completed = 0
        self.tmpdir: Path | None = None
        self.client: Any = None

        settings = observability_settings() or {}
        self.uri = resolve_tracking_uri(monitor.tracking_uri)
        self.experiment = (
            monitor.experiment_name or settings.get("experiment_name") or DEFAULT_EXPERIMENT_NAME
        )
        self.run_name = monitor.run_name
        program = monitor.program
        lms = program.all_language_models()
        self.secrets = [s for s in (getattr(lm, "_api_key", None) for lm in lms) if s]
        backend = self.backend()
        if backend is not None:
            backend.add_secrets(self.secrets)
        from promptfit.observability.mlflow_backend import MLflowSpanBackend

        # Bound here, on the fit's event loop before it starts any task, so exactly this fit's
        # traces are linked to the run (the worker fills the link once the run exists).
        self.link, self._link_token = MLflowSpanBackend.bind_run_link()
        self.config_payload = self._describe(program, lms)
        self.params, self.tags = self._params_and_tags(self.config_payload)
        self.model_params = {
            k: v
            for k, v in self.params.items()
            if "." not in k or k.startswith(("program.", "compile."))
        }
        if monitor.log_datasets:
            self.dataset_jobs = self._datasets(program)
        self.active = True
        acquire_http_defaults()
        self.thread = threading.Thread(
            target=self._work, name="promptfit-mlflow-monitor", daemon=True
        )
        self.thread.start()

    # -- event-loop side -------------------------------------------------------------------
    def _describe(self, program: Any, lms: list[Any]) -> dict[str, Any]:
        from promptfit.observability.mlflow_backend import scrub_secrets

        state = self.monitor.context
        callbacks = list(state.callbacks) if state is not None and state.callbacks else []
        callback_configs = []
        for callback in callbacks:
            try:
                config = callback.get_config()
            except Exception:
                config = {}
            callback_configs.append({"class_name": type(callback).__name__, "config": config})
        lm_configs = []
        for lm in lms:
            try:
                lm_configs.append(lm.get_config())
            except Exception:
                lm_configs.append({"name": getattr(lm, "name", repr(lm))})
        payload = {
            "program": {"name": program.name, "class_name": type(program).__name__},
            "fit": dict(self.monitor.params),
            "compile": program.get_compile_config(),
            "callbacks": callback_configs,
            "language_models": lm_configs,
        }
        return scrub_secrets(payload, self.secrets)

    def _params_and_tags(self, payload: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
        from promptfit.observability.mlflow_backend import scrub_secrets

        params: dict[str, str] = {}
        _flatten("", payload["fit"], params)
        _flatten("program", payload["program"], params)
        _flatten("compile", payload["compile"], params)
        params["callbacks"] = ",".join(c["class_name"] for c in payload["callbacks"])
        seen: dict[str, int] = {}
        for entry in payload["callbacks"]:
            name = entry["class_name"]
            seen[name] = seen.get(name, 0) + 1
            label = name if seen[name] == 1 else f"{name}_{seen[name]}"
            _flatten(f"callback.{label}", entry["config"] or {}, params)
        for config in payload["language_models"]:
            _flatten(f"lm.{config.get('name', 'lm')}", config, params)
        tags = {
            "promptfit.program": payload["program"]["name"],
            "promptfit.version": _promptfit_version(),
            **{str(k): str(v) for k, v in self.monitor.tags.items()},
        }
        tags = scrub_secrets(tags, self.secrets)
        return (
            {_key(k): v[:_MAX_PARAM_VALUE] for k, v in params.items()},
            {_key(k): str(v)[:8000] for k, v in tags.items()},
        )

    def _datasets(self, program: Any) -> list[tuple[str, str, list[dict[str, Any]], list[str]]]:
        from promptfit.observability.run_outputs import dataset_rows

        state = self.monitor.context
        if not isinstance(state, FitContext):
            return []
        jobs = []
        for context, suffix, xs, ys in (
            ("training", "train", state.xs, state.ys),
            ("validation", "validation", state.val_xs, state.val_ys),
        ):
            rows, targets = dataset_rows(xs, ys)
            if rows:
                jobs.append((context, f"{_key(program.name)}-{suffix}", rows, targets))
        return jobs

    def add_prompt_job(self, score: float | None, monitor: str | None, aliases: list[str]) -> None:
        """Snapshot every trainable prompt now (event loop) for the worker to register."""
        from promptfit.observability.registry import trainable_prompts

        program = self.monitor.program
        values = {name: v.numpy() for name, v in trainable_prompts(program).items()}
        if not values:
            return
        state = self.monitor.context
        epoch = self.current_epoch
        if epoch is None:  # resumed mid-epoch: no on_epoch_begin yet
            epoch = state.epoch if isinstance(state, FitContext) else self.last_epoch
        job = PromptJob(values=values, epoch=epoch, score=score, monitor=monitor, aliases=aliases)
        with self.lock:
            self.prompt_jobs.append(job)

    def backend(self) -> Any:
        from promptfit.observability.mlflow_backend import MLflowSpanBackend
        from promptfit.observability.spans import span_backend

        backend = span_backend()
        if isinstance(backend, MLflowSpanBackend) and backend.tracking_uri == self.uri:
            return backend
        return None

    def detach(self) -> None:
        from promptfit.observability.mlflow_backend import MLflowSpanBackend

        MLflowSpanBackend.unbind_run_link(self.link, self._link_token)

    def add_metrics(
        self, logs: dict[str, Any] | None, step: int, prefix: str = ""
    ) -> list[tuple[str, float, int, int]]:
        now = int(time.time() * 1000)
        rows = [
            (_key(f"{prefix}{key}"), number, now, int(step))
            for key, value in (logs or {}).items()
            if (number := _number(value)) is not None
        ]
        with self.lock:
            self.metrics.extend(rows)
            overflow = len(self.metrics) - _MAX_BUFFERED_METRICS
            if overflow > 0:  # a very long outage: keep the newest
                del self.metrics[:overflow]
        return rows

    def kick(self) -> int:
        with self.lock:
            self.kicked = True
            self.requested += 1
            target = self.requested
        self.wake.set()
        return target

    def wait_first_attempt(self, timeout: float) -> None:
        if self.kicked and not self.first_attempt.is_set():
            self.first_attempt.wait(timeout=timeout)

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
        """Stop tracking this fit (after an internal error): the worker exits."""
        self.active = False
        self.disabled = True
        with self.lock:
            self.end_requested = True
        self.kick()

    async def finish(self, flush_timeout: float) -> None:
        program = self.monitor.program
        artifacts: list[tuple[Path, str]] = []
        try:
            program_file = self.stage_dir() / "program" / f"{_key(program.name)}.json"
            if self.status == "KILLED":
                program.save(program_file)  # cancelled: no awaiting in a cancelled scope
            else:
                await anyio.to_thread.run_sync(program.save, program_file)
            artifacts.append((program_file, "program"))
            if self.status == "FINISHED" and self.monitor.log_model:
                self.model_file = program_file
        except Exception:
            logger.debug("Monitor could not save the program.", exc_info=True)
        if self.status == "FINISHED" and self.monitor.register_prompts:
            try:
                self.current_epoch = self.last_epoch
                score, key = self._final_score()
                self.add_prompt_job(score, key, [self.monitor.prompt_alias])
            except Exception:
                logger.debug("Monitor could not snapshot the prompts.", exc_info=True)
        best = self._best_checkpoint()
        if best is not None:
            artifacts.append((best, "checkpoints/best"))
        usage: dict[str, Any] = {}
        try:
            usage = program.usage_totals().as_dict()
        except Exception:
            logger.debug("Monitor could not read usage totals.", exc_info=True)
        self.add_metrics(usage, self.last_epoch, prefix="usage/")
        with self.lock:
            self.artifacts.extend(artifacts)
            self.end_requested = True
        target = self.kick()
        if self.status == "KILLED":
            return  # the worker finishes in the background; never delay a cancellation
        remote = self.uri.startswith(("http://", "https://"))
        if remote and (self.down or not self.succeeded):
            # The full timeout is for a server that has been answering (uploads in progress).
            # One that is down or has not answered yet gets a short grace: a server that came
            # back answers within a second, a hung one never does.
            flush_timeout = min(flush_timeout, 4.0)
        elif not remote:
            # A local store cannot hang, but creating its database the first time can take a
            # while: wait for the data to be written rather than lose the run.
            flush_timeout = max(flush_timeout, _LOCAL_STORE_WAIT_S)
        deadline = time.monotonic() + flush_timeout
        while self.completed < target and time.monotonic() < deadline and self.thread.is_alive():
            await anyio.sleep(0.02)
        if self.completed >= target:
            # Caught up: the worker is only releasing MLflow's HTTP settings and its temp dir;
            # let it, so fit returns with the environment restored.
            await anyio.to_thread.run_sync(self.thread.join, 2.0)
        if remote and self.completed < target and not self.succeeded and not self.disabled:
            from promptfit.observability.mlflow_backend import report_unreachable

            # Say it now, not from the worker after fit has returned (or never, at exit).
            report_unreachable(self.uri, f"no answer within {flush_timeout:.0f}s")
        with self.lock:
            unsent = len(self.metrics) + len(self.params) + len(self.artifacts)
        if unsent and not self.disabled:
            logger.info("Monitor: %d items could not be sent to MLflow before the end.", unsent)

    def _final_score(self) -> tuple[float | None, str | None]:
        """The last epoch's value of the key a ProgramCheckpoint monitors (else val_reward,
        else reward), for the final version's ``promptfit.score`` tag."""
        state = self.monitor.context
        callbacks = list(state.callbacks) if state is not None and state.callbacks else []
        keys = [
            c.monitor
            for c in callbacks
            if type(c).__name__ == "ProgramCheckpoint" and isinstance(c.monitor, str)
        ]
        for key in [*keys, "val_reward", "reward"]:
            value = _number(self.last_logs.get(key))
            if value is not None:
                return value, key
        return None, None

    def _best_checkpoint(self) -> Path | None:
        state = self.monitor.context
        callbacks = list(state.callbacks) if state is not None and state.callbacks else []
        checkpointers = [c for c in callbacks if type(c).__name__ == "ProgramCheckpoint"]
        if not checkpointers:
            return None
        directories: list[Path] = []
        for callback in checkpointers:
            for attr in ("directory", "dirpath", "checkpoint_dir", "filepath", "path"):
                value = getattr(callback, attr, None)
                if isinstance(value, str | Path):
                    path = Path(value)
                    directories.append(path if path.is_dir() else path.parent)
        for saved in self.saved_checkpoints:
            path = Path(saved)
            directories.append(path if path.is_dir() else path.parent)
        try:
            from promptfit.checkpoints import best_checkpoint  # owned by promptfit.checkpoints
        except Exception:
            best_checkpoint = None
        if best_checkpoint is not None:
            for directory in dict.fromkeys(directories):
                try:
                    found = _as_path(best_checkpoint(directory))
                except Exception:
                    continue
                if found is not None and found.exists():
                    return found
        for saved in reversed(self.saved_checkpoints):
            if Path(saved).exists():
                return Path(saved)
        return None

    def stage_dir(self) -> Path:
        if self.tmpdir is None:
            self.tmpdir = Path(tempfile.mkdtemp(prefix="promptfit-monitor-"))
        return self.tmpdir

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
            if self.tmpdir is not None:
                shutil.rmtree(self.tmpdir, ignore_errors=True)

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
            self._send_params(client)
            self._send_datasets(client)
            self._send_metrics(client)
            self._send_prompts(client)
            self._send_artifacts(client)
            with self.lock:
                final = self.end_requested
            if final:
                self._send_model(client)
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
            if _is_permanent(exc):
                self.disabled = True
                detail = scrub_secrets(str(exc), self.secrets)[:300]
                _warn_from_worker(
                    f"promptfit: MLflow rejected the Monitor's run ({detail}); tracking is off "
                    "for this fit. Training continues."
                )
                return
            self.down = True
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

            self.client = MlflowClient(tracking_uri=self.uri)
        return self.client

    def _start_run(self, client: Any) -> None:
        from mlflow.exceptions import MlflowException

        from promptfit.observability.tracking import get_or_create_experiment

        experiment_id = get_or_create_experiment(client, self.experiment, self.uri)
        run = None
        resume = self.monitor._loaded_run_id or self.monitor._initial_run_id
        if resume:
            try:
                run = client.get_run(resume)
            except MlflowException as exc:
                if not _is_permanent(exc):
                    raise
                logger.info("MLflow run %s not found; starting a new run.", resume)
            if run is not None and run.info.lifecycle_stage == "deleted":
                run = None
            if run is not None:
                if run.info.status != "RUNNING":
                    client.update_run(run.info.run_id, status="RUNNING")
                existing = run.data.params
                with self.lock:  # params are immutable in MLflow: keep the first values
                    self.params = {k: v for k, v in self.params.items() if k not in existing}
                experiment_id = run.info.experiment_id
        if run is None:
            run = client.create_run(experiment_id, run_name=self.run_name)
        backend = self.backend()
        if backend is not None and self.active:  # before run_id is set: wait_for_run polls it
            backend.attach_run(self.link, run.info.run_id, str(experiment_id))
        self.experiment_id = str(experiment_id)
        self.run_id = run.info.run_id
        path = self.stage_dir() / "promptfit" / "fit_config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.config_payload, indent=2, default=str), encoding="utf-8")
        with self.lock:
            self.artifacts.insert(0, (path, "promptfit"))

    def _send_params(self, client: Any) -> None:
        from mlflow.entities import Param, RunTag

        while True:
            with self.lock:
                params = list(self.params.items())[:_PARAMS_PER_BATCH]
                tags = list(self.tags.items())[:_PARAMS_PER_BATCH]
            if not params and not tags:
                return
            try:
                client.log_batch(
                    self.run_id,
                    params=[Param(k, v) for k, v in params],
                    tags=[RunTag(k, v) for k, v in tags],
                )
            except Exception as exc:
                if not _is_permanent(exc):
                    raise
                self._send_one_by_one(client, params, tags)
            with self.lock:
                for key, _ in params:
                    self.params.pop(key, None)
                for key, _ in tags:
                    self.tags.pop(key, None)

    def _send_one_by_one(
        self, client: Any, params: list[tuple[str, str]], tags: list[tuple[str, str]]
    ) -> None:
        for key, value in params:
            try:
                client.log_param(self.run_id, key, value)
            except Exception as exc:
                if not _is_permanent(exc):
                    raise
                logger.debug("MLflow rejected param %r: %s", key, exc)
        for key, value in tags:
            try:
                client.set_tag(self.run_id, key, value)
            except Exception as exc:
                if not _is_permanent(exc):
                    raise
                logger.debug("MLflow rejected tag %r: %s", key, exc)

    def _send_metrics(self, client: Any) -> None:
        from mlflow.entities import Metric

        while True:
            with self.lock:
                rows = self.metrics[:_METRICS_PER_BATCH]
            if not rows:
                return
            try:
                client.log_batch(self.run_id, metrics=[Metric(*row) for row in rows])
            except Exception as exc:
                if not _is_permanent(exc):
                    raise
                for row in rows:
                    try:
                        client.log_batch(self.run_id, metrics=[Metric(*row)])
                    except Exception as inner:
                        if not _is_permanent(inner):
                            raise
                        logger.debug("MLflow rejected metric %r: %s", row[0], inner)
            with self.lock:
                del self.metrics[: len(rows)]  # only appended at the end meanwhile

    def _drop_on_permanent(self, what: str, exc: Exception) -> None:
        """A registry/inputs/model call MLflow refused for good: warn once, keep tracking.

        An API this MLflow version lacks (ImportError, AttributeError, TypeError...) is just as
        permanent; only what looks like a connectivity problem is re-raised, to be retried.
        """
        from promptfit.observability.mlflow_backend import scrub_secrets

        unsupported = isinstance(exc, ImportError | AttributeError | TypeError | ValueError)
        if not _is_permanent(exc) and not unsupported:
            raise exc
        detail = scrub_secrets(str(exc), self.secrets)[:300]
        logger.debug("MLflow rejected %s: %s", what, detail)
        if not getattr(self, "_warned_rejected", False):
            self._warned_rejected = True
            _warn_from_worker(
                f"promptfit: MLflow rejected the Monitor's {what} ({detail}); the run's params "
                "and metrics are still tracked. Training continues."
            )

    def _send_datasets(self, client: Any) -> None:
        from promptfit.observability.run_outputs import log_datasets

        with self.lock:
            jobs = list(self.dataset_jobs)
        if not jobs:
            return
        try:
            log_datasets(client, self.run_id, jobs)
        except Exception as exc:
            self._drop_on_permanent("data sets", exc)
        with self.lock:
            del self.dataset_jobs[: len(jobs)]

    def _send_prompts(self, client: Any) -> None:
        from promptfit.observability.registry import (
            link_prompts_to_run,
            prompt_registry_name,
            register_prompt_version,
        )

        monitor = self.monitor
        program_name = monitor.program.name
        while True:
            with self.lock:
                if not self.prompt_jobs:
                    return
                job = self.prompt_jobs[0]
            try:
                versions = []
                for module, value in job.values.items():
                    name = prompt_registry_name(
                        monitor.prompt_name.format(program=program_name, module=module)
                    )
                    version = register_prompt_version(
                        client, name, value, run_id=str(self.run_id), epoch=job.epoch,
                        score=job.score, monitor=job.monitor, program_name=program_name,
                        module_name=module,
                    )  # fmt: skip
                    for alias in job.aliases:
                        client.set_prompt_alias(name, alias, int(version.version))
                    versions.append(version)
                link_prompts_to_run(client, str(self.run_id), versions)
                self.linked_prompts.extend(versions)
            except Exception as exc:
                self._drop_on_permanent("prompt registration", exc)
            with self.lock:
                if self.prompt_jobs and self.prompt_jobs[0] is job:
                    self.prompt_jobs.pop(0)

    def _send_model(self, client: Any) -> None:
        from promptfit.observability.run_outputs import create_program_model, log_program_model

        source = self.model_file
        if source is None:
            return
        try:
            folder = self.stage_dir() / "model"
            folder.mkdir(parents=True, exist_ok=True)
            files = [folder / source.name]
            shutil.copy2(source, files[0])
            config = self.stage_dir() / "promptfit" / "fit_config.json"
            if config.exists():
                files.append(folder / config.name)
                shutil.copy2(config, files[-1])
            for file in files:
                self._stage(file)  # scrubs in place (the folder is ours)
            metrics = list(self.last_rows)  # the run's own points: linked, not duplicated
            if self.model_id is None:
                self.model_id = create_program_model(
                    client, experiment_id=str(self.experiment_id), run_id=str(self.run_id),
                    name=_key(self.monitor.program.name),
                    params=dict(list(self.model_params.items())[:100]),
                )  # fmt: skip
            log_program_model(
                client, model_id=self.model_id, run_id=str(self.run_id), files=files,
                metrics=metrics,
            )  # fmt: skip
        except (FileNotFoundError, PermissionError) as exc:
            logger.debug("Monitor skipped the logged model: %s", exc)
        except Exception as exc:
            self._drop_on_permanent("logged model", exc)
        self.model_file = None

    def _send_artifacts(self, client: Any) -> None:
        while True:
            with self.lock:
                if not self.artifacts:
                    return
                local, artifact_path = self.artifacts[0]
            try:
                staged = self._stage(local)
                if staged.is_dir():
                    client.log_artifacts(self.run_id, str(staged), f"{artifact_path}/{staged.name}")
                else:
                    client.log_artifact(self.run_id, str(staged), artifact_path)
            except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
                logger.debug("Monitor skipped artifact %s: %s", local, exc)
            except Exception as exc:
                if not _is_permanent(exc):
                    raise
                logger.debug("MLflow rejected artifact %s: %s", local, exc)
            with self.lock:
                if self.artifacts and self.artifacts[0][0] == local:
                    self.artifacts.pop(0)

    def _stage(self, local: Path) -> Path:
        """A scrubbed copy of ``local`` inside our temp dir (user files are never modified)."""
        from promptfit.observability.mlflow_backend import scrub_secrets

        stage = self.stage_dir()
        if local.is_relative_to(stage):
            target = local
        else:
            target = stage / "staged" / local.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if local.is_dir():
                shutil.copytree(local, target, dirs_exist_ok=True)
            else:
                shutil.copy2(local, target)
        files = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()]
        for file in files:
            if file.suffix.lower() not in (".json", ".jsonl", ".txt", ".yaml", ".yml", ".csv"):
                continue
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            clean = scrub_secrets(text, self.secrets)
            if clean != text:
                file.write_text(clean, encoding="utf-8")
        return target


def _as_path(found: Any) -> Path | None:
    if found is None:
        return None
    if isinstance(found, str | Path):
        return Path(found)
    if isinstance(found, dict) and "path" in found:
        return Path(found["path"])
    path = getattr(found, "path", None)
    return Path(path) if isinstance(path, str | Path) else None


def _promptfit_version() -> str:
    try:
        from promptfit._version import __version__

        return __version__
    except Exception:
        return "unknown"
