"""Turn MLflow observability on or off for the whole process.

:func:`enable_observability` does three things: it points MLflow at a tracking store (an
embedded SQLite file in the working directory unless told otherwise, so it works with no server
at all), installs the span backend so every program, module and LM call is traced, and makes
every later ``fit`` attach a :class:`~promptfit.callbacks.Monitor` so runs are tracked without
touching the training script.

MLflow's HTTP client retries a failing request for minutes by default; a tracking server that
is down must not stall training, so while observability (or a Monitor) is active, MLflow's
retry/timeout environment variables are lowered - only those the user did not set, and restored
when the last user releases them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptfit.observability.mlflow_backend import (
    MLflowSpanBackend,
    mark_reachable,
    redact_uri,
    report_unreachable,
)
from promptfit.observability.spans import set_span_backend, span_backend
from promptfit.observability.store_check import check_store

if TYPE_CHECKING:
    from promptfit.callbacks.callback import Callback

__all__ = [
    "DEFAULT_EXPERIMENT_NAME",
    "auto_monitor",
    "default_tracking_uri",
    "disable_observability",
    "enable_observability",
    "get_or_create_experiment",
    "http_defaults",
    "observability_settings",
    "resolve_tracking_uri",
]

logger = logging.getLogger("promptfit")

DEFAULT_EXPERIMENT_NAME = "promptfit"

# Fail fast and let promptfit's own buffer do the retrying: by default MLflow retries 7 times
# with exponential backoff (minutes) and waits 120 s per request. One retry is kept because
# urllib3 makes the first retry immediately, which absorbs a stale keep-alive connection after
# a server restart; a dead server is then detected at once (connection refused) and a hung one
# within 2 x 10 s. The timeout is not lower because a busy server (one worker, a SQLite backend,
# trace uploads queued behind metric writes) can take several seconds to answer, and a request
# that times out is a lost trace; every upload runs off the event loop, so waiting never stalls
# training.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}

_http_lock = threading.Lock()
_http_users = 0
_http_applied: dict[str, str] = {}


def _acquire_http_defaults() -> None:
    global _http_users
    with _http_lock:
        if _http_users == 0:
            for name, value in HTTP_DEFAULTS.items():
                if name not in os.environ:  # never override the user's explicit setting
                    os.environ[name] = value
                    _http_applied[name] = value
        _http_users += 1


def _release_http_defaults() -> None:
    global _http_users
    with _http_lock:
        _http_users = max(0, _http_users - 1)
        if _http_users == 0:
            for name, value in _http_applied.items():
                if os.environ.get(name) == value:  # untouched by anyone else meanwhile
                    del os.environ[name]
            _http_applied.clear()


@contextlib.contextmanager
def http_defaults() -> Iterator[None]:
    """Lower MLflow's HTTP retries and timeout while the block runs (see module docstring).

    Re-entrant and reference-counted across threads: the variables are restored when the last
    holder leaves. Variables the user set explicitly are never changed.

    Example:
        ```python
        from promptfit.observability.enable import http_defaults

        with http_defaults():
            pass  # MLflow calls here fail within seconds if the server is down
        ```
    """
    _acquire_http_defaults()
    try:
        yield
    finally:
        _release_http_defaults()


def default_tracking_uri(directory: str | os.PathLike[str] | None = None) -> str:
    """The embedded store: ``sqlite:///<directory>/mlflow.db`` (working directory by default)."""
    base = Path(directory) if directory is not None else Path.cwd()
    return f"sqlite:///{(base / 'mlflow.db').resolve()}"


def _explicit_mlflow_uri() -> str | None:
    """A tracking URI the user gave MLflow (``set_tracking_uri`` or the env var), if any.

    Read without importing mlflow (slow to import), so a Monitor can resolve its store on the
    event loop.
    """
    module = sys.modules.get("mlflow.tracking._tracking_service.utils")
    uri = getattr(module, "_tracking_uri", None) if module is not None else None
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The URI to use: the argument, else the enabled one, else MLflow's explicit one, else
    the embedded default. Relative SQLite paths are made absolute so a later ``chdir`` does not
    move the store."""
    uri = tracking_uri
    if uri is None and _settings is not None:
        uri = _settings.tracking_uri
    if uri is None:
        uri = _explicit_mlflow_uri()
    if uri is None:
        return default_tracking_uri()
    uri = str(uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = uri[len("sqlite:///") :]
        if path and path != ":memory:" and not Path(path).is_absolute():
            uri = f"sqlite:///{Path(path).resolve()}"
    return uri


def artifact_location_for(tracking_uri: str) -> str | None:
    """Where a new experiment keeps artifacts: ``mlartifacts/`` beside a SQLite file.

    Servers choose for themselves (``None``), as ``mlflow server`` does with its own
    ``./mlartifacts`` default.
    """
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///") :])
        return (path.parent / "mlartifacts").resolve().as_uri()
    return None


def get_or_create_experiment(client: Any, name: str, tracking_uri: str) -> str:
    """Experiment id for ``name``, creating (or restoring a deleted) experiment if needed."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if getattr(experiment, "lifecycle_stage", "active") == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return str(experiment.experiment_id)
    try:
        return str(
            client.create_experiment(name, artifact_location=artifact_location_for(tracking_uri))
        )
    except MlflowException:  # created concurrently by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


@dataclass
class _Settings:
    tracking_uri: str
    experiment_name: str
    backend: MLflowSpanBackend
    previous_uri: str | None
    previous_env_uri: str | None


_settings: _Settings | None = None
_settings_lock = threading.RLock()


def observability_settings() -> dict[str, Any] | None:
    """``{"tracking_uri", "experiment_name", "experiment_id"}`` while enabled, else ``None``."""
    settings = _settings
    if settings is None:
        return None
    return {
        "tracking_uri": settings.tracking_uri,
        "experiment_name": settings.experiment_name,
        "experiment_id": settings.backend.experiment_id,
    }


def enable_observability(
    tracking_uri: str | None = None, experiment_name: str | None = None
) -> str:
    """Trace every program, module and LM call to MLflow and track every ``fit`` as a run.

    Args:
        tracking_uri: An MLflow tracking URI (``http://127.0.0.1:5000``, ``sqlite:///x.db``...).
            ``None`` uses the URI you already gave MLflow (``MLFLOW_TRACKING_URI`` or
            ``mlflow.set_tracking_uri``) if any, else an embedded store:
            ``sqlite:///mlflow.db`` in the working directory with artifacts in
            ``./mlartifacts`` beside it - nothing to start, and ``mlflow ui
            --backend-store-uri sqlite:///mlflow.db`` shows it later.
        experiment_name: The experiment for traces and runs (default ``"promptfit"``).

    Returns:
        The tracking URI in use.

    A server that cannot be reached does not raise: one warning is shown, training proceeds
    untraced, and Monitors send their buffered run data if it comes back.

    Example:
        ```python
        import promptfit as pf

        pf.enable_observability(experiment_name="arithmetic")  # ./mlflow.db, no server
        # ... await program.fit(...)  -> a run with params, metrics, artifacts and traces
        pf.disable_observability()
        ```
    """
    global _settings
    import mlflow

    with _settings_lock:
        if _settings is not None:
            disable_observability()
        uri = resolve_tracking_uri(tracking_uri)
        name = experiment_name or DEFAULT_EXPERIMENT_NAME
        from mlflow.tracking._tracking_service import utils as tracking_utils

        previous_uri = getattr(tracking_utils, "_tracking_uri", None)
        previous_env_uri = os.environ.get("MLFLOW_TRACKING_URI")
        _acquire_http_defaults()
        mlflow.set_tracking_uri(uri)  # the trace exporter writes to the global tracking URI
        backend = MLflowSpanBackend(tracking_uri=uri)
        # An unusable SQLite file: one warning now, not minutes of MLflow's retries (building
        # the tracer provider below already opens the store).
        if check_store(uri):
            with contextlib.suppress(Exception):
                # Build MLflow's tracer provider now, not lazily inside the first span (which
                # would run on the event loop, in the middle of a fit).
                from mlflow.tracing.provider import _get_tracer

                _get_tracer("promptfit")
            try:
                client = mlflow.MlflowClient(uri)
                backend.experiment_id = get_or_create_experiment(client, name, uri)
                mark_reachable(uri)
            except Exception as exc:
                report_unreachable(uri, exc)
        backend.install_log_filter()
        set_span_backend(backend)
        _settings = _Settings(uri, name, backend, previous_uri, previous_env_uri)
        logger.info("Observability enabled: %s, experiment %r.", redact_uri(uri), name)
        return uri


def disable_observability() -> None:
    """Stop tracing and auto-tracking; restore MLflow's previous tracking URI.

    Pending traces are flushed first (unless the server is known to be down, where flushing
    could only fail).

    Example:
        ```python
        import promptfit as pf

        pf.disable_observability()  # a no-op when observability is off
        ```
    """
    global _settings
    with _settings_lock:
        settings = _settings
        if settings is None:
            return
        _settings = None
        if span_backend() is settings.backend:
            set_span_backend(None)
        try:
            import mlflow
            from mlflow.tracking._tracking_service import utils as tracking_utils

            from promptfit.observability.mlflow_backend import is_unreachable

            ours = getattr(tracking_utils, "_tracking_uri", None) == settings.tracking_uri
            if ours and settings.previous_uri != settings.tracking_uri:
                # Changing the URI retires MLflow's trace exporter, which flushes it first.
                mlflow.set_tracking_uri(settings.previous_uri)
                if settings.previous_env_uri is not None:
                    os.environ["MLFLOW_TRACKING_URI"] = settings.previous_env_uri
            elif not is_unreachable(settings.tracking_uri):
                mlflow.flush_trace_async_logging()
        except Exception:
            logger.debug("Could not fully restore MLflow's tracking URI.", exc_info=True)
        finally:
            settings.backend.remove_log_filter()
            _release_http_defaults()


def auto_monitor(callbacks: Sequence[Callback] | Iterable[Callback]) -> Callback | None:
    """The Monitor ``fit`` adds while observability is enabled (``None`` if off or the user
    already passed a Monitor)."""
    if _settings is None:
        return None
    from promptfit.callbacks.monitor import Monitor

    if any(isinstance(callback, Monitor) for callback in callbacks):
        return None
    try:
        return Monitor()
    except Exception:  # tracking must never stop a fit from starting
        warnings.warn("promptfit: could not create the default Monitor.", RuntimeWarning, 2)
        return None
