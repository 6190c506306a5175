"""Where tracking goes and how MLflow's HTTP client behaves: shared by ``enable_observability``,
``Monitor`` and the Prompt Registry helpers.

Why a module of its own: these helpers used to live in ``enable.py`` (some private), so
``callbacks/monitor.py`` imported ``enable.py`` and ``enable.py`` imported the Monitor back.
Now ``Monitor``, ``registry.py`` and ``enable.py`` all import this module, and it imports none
of them.

MLflow's HTTP client retries a failing request for minutes by default; a tracking server that
is down must not stall training, so while observability (or a Monitor) is active, MLflow's
retry/timeout environment variables are lowered - only those the user did not set, and restored
when the last user releases them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from promptfit.observability.mlflow_backend import MLflowSpanBackend

__all__ = [
    "DEFAULT_EXPERIMENT_NAME",
    "HTTP_DEFAULTS",
    "ObservabilitySettings",
    "acquire_http_defaults",
    "artifact_location_for",
    "current_settings",
    "default_tracking_uri",
    "get_or_create_experiment",
    "http_defaults",
    "observability_settings",
    "release_http_defaults",
    "resolve_tracking_uri",
    "set_current_settings",
]

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


def acquire_http_defaults() -> None:
    """Lower MLflow's HTTP retries and timeout until the matching
    :func:`release_http_defaults` (reference-counted across threads; variables the user set
    are never changed). Prefer :func:`http_defaults` where one block holds them."""
    global _http_users
    with _http_lock:
        if _http_users == 0:
            for name, value in HTTP_DEFAULTS.items():
                if name not in os.environ:  # never override the user's explicit setting
                    os.environ[name] = value
                    _http_applied[name] = value
        _http_users += 1


def release_http_defaults() -> None:
    """Give back one :func:`acquire_http_defaults`; the last holder restores the variables
    (those nobody changed meanwhile)."""
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
        from promptfit.observability.tracking import http_defaults

        with http_defaults():
            pass  # MLflow calls here fail within seconds if the server is down
        ```
    """
    acquire_http_defaults()
    try:
        yield
    finally:
        release_http_defaults()


@dataclass
class ObservabilitySettings:
    """What :func:`~promptfit.observability.enable_observability` turned on, and what to
    restore when it is turned off."""

    tracking_uri: str
    experiment_name: str
    backend: MLflowSpanBackend
    previous_uri: str | None
    previous_env_uri: str | None


_settings: ObservabilitySettings | None = None


def current_settings() -> ObservabilitySettings | None:
    """The settings while observability is enabled, else ``None``."""
    return _settings


def set_current_settings(settings: ObservabilitySettings | None) -> None:
    """Record (or clear, with ``None``) what ``enable_observability`` turned on."""
    global _settings
    _settings = settings


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
