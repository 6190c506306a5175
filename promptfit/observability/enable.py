"""Turn MLflow observability on or off for the whole process.

:func:`enable_observability` does three things: it points MLflow at a tracking store (an
embedded SQLite file in the working directory unless told otherwise, so it works with no server
at all), installs the span backend so every program, module and LM call is traced, and makes
every later ``fit`` attach a :class:`~promptfit.callbacks.Monitor` so runs are tracked without
touching the training script. It does the last by registering a default-callback factory
(:mod:`promptfit.callbacks.defaults`), so the training loop never imports observability.

The tracking-URI and MLflow HTTP helpers live in :mod:`promptfit.observability.tracking`
(shared with Monitor); they are re-exported here under their old names.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from promptfit.observability.mlflow_backend import (
    MLflowSpanBackend,
    mark_reachable,
    redact_uri,
    report_unreachable,
)
from promptfit.observability.spans import set_span_backend, span_backend
from promptfit.observability.store_check import check_store
from promptfit.observability.tracking import (
    DEFAULT_EXPERIMENT_NAME,
    HTTP_DEFAULTS,
    ObservabilitySettings,
    acquire_http_defaults,
    artifact_location_for,
    current_settings,
    default_tracking_uri,
    get_or_create_experiment,
    http_defaults,
    observability_settings,
    release_http_defaults,
    resolve_tracking_uri,
    set_current_settings,
)

if TYPE_CHECKING:
    from promptfit.callbacks.callback import Callback

__all__ = [
    "DEFAULT_EXPERIMENT_NAME",
    "HTTP_DEFAULTS",
    "artifact_location_for",
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

# The name under which enable_observability registers its Monitor factory.
MONITOR_FACTORY = "promptfit.observability.monitor"

_settings_lock = threading.RLock()

# The old private names, for code written against them while issue 12's parts are merged
# (the Monitor split moves code that used them); use the public ones in tracking.py.
_acquire_http_defaults = acquire_http_defaults
_release_http_defaults = release_http_defaults


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
    import mlflow

    from promptfit.callbacks.defaults import register_default_callback_factory

    with _settings_lock:
        if current_settings() is not None:
            disable_observability()
        uri = resolve_tracking_uri(tracking_uri)
        name = experiment_name or DEFAULT_EXPERIMENT_NAME
        from mlflow.tracking._tracking_service import utils as tracking_utils

        previous_uri = getattr(tracking_utils, "_tracking_uri", None)
        previous_env_uri = os.environ.get("MLFLOW_TRACKING_URI")
        acquire_http_defaults()
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
        set_current_settings(
            ObservabilitySettings(uri, name, backend, previous_uri, previous_env_uri)
        )
        register_default_callback_factory(MONITOR_FACTORY, auto_monitor)
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
    from promptfit.callbacks.defaults import unregister_default_callback_factory

    with _settings_lock:
        settings = current_settings()
        if settings is None:
            return
        set_current_settings(None)
        unregister_default_callback_factory(MONITOR_FACTORY)
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
            release_http_defaults()


def auto_monitor(callbacks: Sequence[Callback] | Iterable[Callback]) -> Callback | None:
    """The Monitor ``fit`` adds while observability is enabled (``None`` if off or the user
    already passed a Monitor); the default-callback factory ``enable_observability`` registers.

    Monitor is imported here, not at module level: ``callbacks/monitor.py`` imports the
    observability helpers, so a module-level import back would be a cycle.
    """
    if current_settings() is None:
        return None
    from promptfit.callbacks.monitor import Monitor

    if any(isinstance(callback, Monitor) for callback in callbacks):
        return None
    try:
        return Monitor()
    except Exception:  # tracking must never stop a fit from starting
        warnings.warn("promptfit: could not create the default Monitor.", RuntimeWarning, 2)
        return None
