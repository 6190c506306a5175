"""The MLflow tracing backend for :mod:`promptfit.observability.spans`.

Every ``span(...)`` opened by library code becomes an MLflow trace span. Nesting comes from
MLflow's OpenTelemetry context, which lives in context variables: an anyio/asyncio task copies
the context of the code that started it, so each example (run in its own task by ``fit``)
becomes its own trace whose root is the program span, with module spans under it and one
``CHAT_MODEL`` span per LM call under the module that made it.

Opening a span is in-memory work; MLflow exports finished traces from its own background
threads, so the event loop never waits on the tracking server. While the server is known to be
unreachable, spans are not recorded at all (cheap no-ops), so a dead server costs neither time
nor a warning per trace: promptfit shows ONE warning per outage (see
:func:`report_unreachable`).

This module also holds the helpers shared with :class:`~promptfit.callbacks.Monitor`:
secret scrubbing and the reachability registry.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from promptfit.observability.spans import NOOP_SPAN
from promptfit.saving.secrets import REDACTED, is_credential_name, scrub_text

__all__ = [
    "MLflowSpanBackend",
    "RunLink",
    "is_unreachable",
    "mark_reachable",
    "redact_uri",
    "report_unreachable",
    "scrub_secrets",
]

logger = logging.getLogger("promptfit")


# The credential rules (names, key shapes, URL credentials) are promptfit's one scrubber's,
# in promptfit.saving.secrets; MLflow params mask a credential instead of dropping it, so the
# UI shows that one was set.
def _environment_secrets() -> set[str]:
    return {
        value for name, value in os.environ.items() if is_credential_name(name) and len(value) >= 8
    }


def scrub_secrets(value: Any, secrets: Iterable[str] = ()) -> Any:
    """Return ``value`` with anything that looks like a credential replaced by ``***``.

    Three layers, because a key can leak in three ways: under a credential-like name
    (``api_key``, ``password``...), as an exact known secret (``secrets`` plus the values of
    credential-named environment variables) embedded in any string, or in a recognisable shape
    (``sk-...``, ``Bearer ...``, ``user:password@`` in a URL) inside text such as an error
    message. Dicts, lists and tuples
    are walked; other objects are returned unchanged.

    Args:
        value: Any JSON-like structure.
        secrets: Exact secret strings to remove wherever they appear.

    Example:
        ```python
        from promptfit.observability.mlflow_backend import scrub_secrets

        scrub_secrets({"api_key": "abc", "note": "key sk-test-secret-key"})
        # {'api_key': '***', 'note': 'key ***'}
        ```
    """
    known = sorted({s for s in secrets if s and len(s) >= 4} | _environment_secrets(), key=len)
    known.reverse()  # longest first, so a secret containing another is removed whole
    return _scrub(value, known)


def _scrub(value: Any, known: list[str]) -> Any:
    if isinstance(value, str):
        return scrub_text(value, known)
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if is_credential_name(key) and item not in (None, ""):
                out[key] = REDACTED
            else:
                out[key] = _scrub(item, known)
        return out
    if isinstance(value, list | tuple):
        return type(value)(_scrub(item, known) for item in value)
    return value


def redact_uri(uri: str) -> str:
    """``uri`` without ``user:password@``, for messages (tracking URIs may embed credentials)."""
    return scrub_text(uri, [])


# -- reachability ------------------------------------------------------------------------------
# One registry per process, keyed by tracking URI: the Monitor's worker, the span backend and
# MLflow's trace-export threads all learn about the same outage, and the user is told once.
_health_lock = threading.Lock()
_unreachable: set[str] = set()
_warned: set[str] = set()
_probing: set[str] = set()
_recovered_at: dict[str, float] = {}
PROBE_INTERVAL_S = 5.0
RECOVERY_GRACE_S = 60.0
"""How long after a recovery a *late* failure (a trace export, whose start is unknown) is taken
to belong to the outage that just ended. MLflow's exporter drains the traces queued during an
outage one after another, each with a retry and backoff (``MLFLOW_HTTP_REQUEST_*`` set by
``enable_observability``), so its failures can trail the recovery by tens of seconds; 15 s
proved too short in a loaded test run (a second warning for one outage). A real new outage
inside this window is still reported by the Monitor's own uploads, which know their start."""


def is_unreachable(uri: str) -> bool:
    """Whether the last attempt to reach ``uri`` failed (and no later one succeeded)."""
    return uri in _unreachable


def mark_reachable(uri: str) -> None:
    """Record a successful call: spans resume and a later outage warns again."""
    with _health_lock:
        if uri in _unreachable:
            _recovered_at[uri] = time.monotonic()
        _unreachable.discard(uri)
        _warned.discard(uri)


def server_healthy(uri: str, timeout: float = 2.0) -> bool:
    """Whether the tracking server at ``uri`` answers ``GET /health`` with 200 in ``timeout``.

    Why: a call that has gone unanswered for a while is either a hung server or a slow one
    (a loaded machine, a long outage's buffer); this tells them apart without MLflow.
    """
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


def _probe(uri: str) -> None:
    """Poll a down server's ``/health`` so tracing resumes when it is back, even outside a fit
    (when no Monitor is retrying). Runs only while a backend for ``uri`` is installed."""
    from promptfit.observability.spans import span_backend

    try:
        while uri in _unreachable:
            time.sleep(PROBE_INTERVAL_S)
            backend = span_backend()
            if not isinstance(backend, MLflowSpanBackend) or backend.tracking_uri != uri:
                return
            if server_healthy(uri):
                mark_reachable(uri)
    finally:
        with _health_lock:
            _probing.discard(uri)


def _summary(error: BaseException | str) -> str:
    """A short, key-free reason: urllib3's messages are long and repeat the URL."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    lowered = text.lower()
    if "connection refused" in lowered or "failed to establish" in lowered:
        return "connection refused"
    if "timed out" in lowered or "timeout" in lowered:
        return "request timed out"
    if "connection reset" in lowered or "connection aborted" in lowered:
        return "connection reset"
    return str(scrub_secrets(text))[:200]


def report_unreachable(
    uri: str,
    error: BaseException | str,
    *,
    late: bool = False,
    started_at: float | None = None,
) -> None:
    """Record a failed call to ``uri``; the first report of an outage shows ONE warning.

    Called from any thread (the Monitor's worker, MLflow's exporter threads). Training goes on
    regardless; the warning says what is kept (buffered run data) and what is lost (traces).
    A failure that belongs to an outage which has since ended is ignored: a call that
    ``started_at`` (``time.monotonic()``) before the server was seen healthy again, or a
    ``late`` report (trace exports, which MLflow runs asynchronously and whose start is
    unknown) within a short grace period after that.
    """
    with _health_lock:
        recovered = _recovered_at.get(uri, -1e9)
        if started_at is not None and started_at < recovered:
            return
        if late and time.monotonic() - recovered < RECOVERY_GRACE_S:
            return
        _unreachable.add(uri)
        first = uri not in _warned
        _warned.add(uri)
        probe = uri.startswith(("http://", "https://")) and uri not in _probing
        if probe:
            _probing.add(uri)
    if probe:
        threading.Thread(
            target=_probe, args=(uri,), name="promptfit-mlflow-probe", daemon=True
        ).start()
    reason = _summary(error)
    logger.debug("MLflow tracking at %s failed: %s", redact_uri(uri), scrub_secrets(str(error)))
    if first:
        warnings.warn(
            f"promptfit: MLflow tracking at {redact_uri(uri)} is unreachable ({reason}). "
            "Training continues; run parameters and metrics are buffered and sent if the "
            "server comes back before the run ends; traces are dropped meanwhile.",
            RuntimeWarning,
            stacklevel=2,
        )


class _ExportFailureFilter(logging.Filter):
    """Turn MLflow's per-trace export failures into our single outage warning.

    Without it, a dead server prints one MLflow warning per exported trace (one per example).
    """

    def __init__(self, backend: MLflowSpanBackend) -> None:
        super().__init__()
        self.backend = backend

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        export_failure = (
            "Failed to send trace" in message
            or "Failed to log trace" in message
            or "Failed to log spans" in message
        )
        # Only connectivity problems are an outage; anything else (a rejected trace...) is
        # MLflow's to report.
        if export_failure and any(word in message.lower() for word in _CONNECTIVITY):
            report_unreachable(self.backend.tracking_uri, message, late=True)
            return False
        return True


_CONNECTIVITY = (
    "connection",
    "timed out",
    "timeout",
    "max retries exceeded",
    "temporarily unavailable",
    "database is locked",
)


_FILTERED_LOGGERS = (
    "mlflow.tracing.export.mlflow_v3",
    "mlflow.tracing.export.async_export_queue",
)


# -- span handles ----------------------------------------------------------------------------
_NOOP = NOOP_SPAN


class _Handle:
    """Adapts promptfit's span attributes to MLflow's LLM conventions (usage, cost, model)."""

    __slots__ = ("_backend", "_span")

    def __init__(self, live: Any, backend: MLflowSpanBackend) -> None:
        self._span = live
        self._backend = backend

    def set_outputs(self, outputs: Any) -> None:
        with contextlib.suppress(Exception):
            self._span.set_outputs(self._backend.scrub(outputs))

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        try:
            self._set_attributes(attributes)
        except Exception:  # tracing must never break a call
            logger.debug("Could not set span attributes.", exc_info=True)

    def _set_attributes(self, attributes: dict[str, Any]) -> None:
        from mlflow.entities import SpanStatus, SpanStatusCode
        from mlflow.tracing.constant import CostKey, SpanAttributeKey, TokenUsageKey

        attrs = self._backend.scrub(dict(attributes))
        extra: dict[str, Any] = {}
        if attrs.get("model"):
            extra[SpanAttributeKey.MODEL] = attrs["model"]
        if "prompt_tokens" in attrs or "completion_tokens" in attrs:
            prompt = int(attrs.get("prompt_tokens") or 0)
            completion = int(attrs.get("completion_tokens") or 0)
            extra[SpanAttributeKey.CHAT_USAGE] = {
                TokenUsageKey.INPUT_TOKENS: prompt,
                TokenUsageKey.OUTPUT_TOKENS: completion,
                TokenUsageKey.TOTAL_TOKENS: prompt + completion,
            }
        if attrs.get("cost"):
            extra[SpanAttributeKey.LLM_COST] = {CostKey.TOTAL_COST: float(attrs["cost"])}
        self._span.set_attributes({**attrs, **extra})
        if attrs.get("error"):
            self._span.set_status(SpanStatus(SpanStatusCode.ERROR, str(attrs["error"])[:1000]))


class RunLink:
    """Where the traces of one fit go: the Monitor's run, once the worker has created it.

    A link is bound to the fit's context (a context variable, see
    :meth:`MLflowSpanBackend.bind_run_link`), so it reaches every task the fit starts and no
    other code: two fits running at once in one process each link their own traces, and a
    program called outside the fit is not linked to it.
    """

    __slots__ = ("run",)

    def __init__(self) -> None:
        self.run: tuple[str, str] | None = None  # (run_id, experiment_id), set from any thread


_run_link: contextvars.ContextVar[RunLink | None] = contextvars.ContextVar(
    "promptfit_run_link", default=None
)


class MLflowSpanBackend:
    """Records promptfit spans as MLflow traces; install it with ``set_span_backend``.

    Normally created by :func:`promptfit.enable_observability`, which also points MLflow at the
    tracking store. Root spans (one per example) go to ``experiment_id``; inside a fit whose
    :class:`~promptfit.callbacks.Monitor` has bound a :class:`RunLink`
    (:meth:`bind_run_link`), they go to that run's experiment and are linked to the run, so a
    run's page lists the traces of its fit.

    Args:
        tracking_uri: The tracking URI the traces are exported to (used to skip spans while it
            is unreachable and to match the Monitor's run).
        experiment_id: Default destination experiment; ``None`` (not resolved yet, e.g. the
            server was down when observability was enabled) records no spans until a
            Monitor resolves one.
        secrets: Strings never to write into a trace (API keys); credential-like names and
            key-shaped values are scrubbed regardless.

    Example:
        ```python
        from promptfit.observability.mlflow_backend import MLflowSpanBackend
        from promptfit.observability.spans import set_span_backend

        backend = MLflowSpanBackend("sqlite:///mlflow.db", experiment_id="1")
        set_span_backend(backend)  # every program, module and LM call is now traced
        set_span_backend(None)
        ```
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self._secrets: set[str] = set(secrets)
        self._known: list[str] = []
        self._filter = _ExportFailureFilter(self)
        self._refresh_known()

    # -- configuration -------------------------------------------------------------------
    def add_secrets(self, secrets: Iterable[str | None]) -> None:
        """Also scrub these exact strings (the Monitor registers the program's API keys)."""
        new = {s for s in secrets if s}
        if not new <= self._secrets:
            self._secrets |= new
            self._refresh_known()

    def _refresh_known(self) -> None:
        known = {s for s in self._secrets if len(s) >= 4} | _environment_secrets()
        self._known = sorted(known, key=len, reverse=True)

    def scrub(self, value: Any) -> Any:
        return _scrub(value, self._known)

    @staticmethod
    def bind_run_link() -> tuple[RunLink, contextvars.Token[RunLink | None]]:
        """Bind a new, empty link to the calling context (call it on the fit's event loop,
        before the fit starts its tasks); release it with :meth:`unbind_run_link`."""
        link = RunLink()
        return link, _run_link.set(link)

    @staticmethod
    def unbind_run_link(link: RunLink, token: contextvars.Token[RunLink | None]) -> None:
        if _run_link.get() is not link:
            return
        try:
            _run_link.reset(token)
        except ValueError:  # released from another context than the one that bound it
            _run_link.set(None)

    def attach_run(self, link: RunLink, run_id: str, experiment_id: str) -> None:
        """Send the traces of ``link``'s fit to ``experiment_id``, linked to ``run_id``.

        Safe from any thread (the Monitor's worker creates the run)."""
        link.run = (run_id, experiment_id)
        if self.experiment_id is None:
            self.experiment_id = experiment_id

    def install_log_filter(self) -> None:
        for name in _FILTERED_LOGGERS:
            logging.getLogger(name).addFilter(self._filter)

    def remove_log_filter(self) -> None:
        for name in _FILTERED_LOGGERS:
            logging.getLogger(name).removeFilter(self._filter)

    def get_config(self) -> dict[str, Any]:
        return {"tracking_uri": redact_uri(self.tracking_uri), "experiment_id": self.experiment_id}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MLflowSpanBackend:
        return cls(**config)

    # -- the SpanBackend protocol ----------------------------------------------------------
    @contextlib.contextmanager
    def start(
        self, name: str, kind: str, inputs: Any, attributes: dict[str, Any] | None
    ) -> Iterator[Any]:
        link = _run_link.get()
        run = link.run if link is not None else None
        destination = run[1] if run is not None else self.experiment_id
        if destination is None or self.tracking_uri in _unreachable:
            yield _NOOP
            return
        import mlflow
        from mlflow.entities.trace_location import MlflowExperimentLocation

        kwargs: dict[str, Any] = {}
        if mlflow.get_current_active_span() is None:  # a root span: one trace per example
            kwargs["trace_destination"] = MlflowExperimentLocation(destination)
            if run is not None:
                kwargs["run_id"] = run[0]
        with mlflow.start_span(name=name, span_type=kind, **kwargs) as live:
            handle = _Handle(live, self)
            if inputs is not None:
                with contextlib.suppress(Exception):
                    live.set_inputs(self.scrub(inputs))
            if attributes:
                handle.set_attributes(attributes)
            yield handle
