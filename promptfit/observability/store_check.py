"""Tell, in milliseconds, whether an embedded SQLite tracking store can be used at all.

MLflow's SQLite store retries a database it cannot open with exponential backoff for minutes
(about 205 s before it gives up), and it does so again for every client a fit creates. A
``./mlflow.db`` that is a directory, not a database, or on a read-only disk is not an outage
that will end on its own: waiting only stalls ``enable_observability`` and turns every fit into
dozens of warnings. So before MLflow touches a ``sqlite:///`` store, promptfit opens it with
the standard :mod:`sqlite3` module, with a short timeout, and tries a write that it rolls back;
if that fails the store is recorded as unusable, ONE warning says why and how to fix it, and
tracing and Monitors skip it for the rest of the process (a later check that passes, after the
user fixed the file, turns it back on).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import warnings
from pathlib import Path
from urllib.parse import unquote

__all__ = ["check_store", "local_store_problem", "sqlite_path"]

logger = logging.getLogger("promptfit")

# Seconds SQLite waits for another process's write lock during the probe: a store that is
# merely busy is usable, so a lock that outlasts this is not reported as a problem.
_BUSY_TIMEOUT_S = 2.0


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``None`` for other stores and ``:memory:``)."""
    if not uri.startswith("sqlite:///"):
        return None
    raw = unquote(uri[len("sqlite:///") :].split("?", 1)[0])
    if not raw or raw == ":memory:":
        return None
    return Path(raw)


def local_store_problem(uri: str) -> str | None:
    """Why the SQLite store of ``uri`` cannot be used, or ``None`` if it can (or is not local).

    Opens the file with :mod:`sqlite3` (never through MLflow, whose retries take minutes),
    reads the schema, and starts a write transaction that creates and rolls back a probe table,
    so a read-only file or directory fails here. Nothing is left in the database; a missing
    file is created empty, as MLflow would create it anyway.
    """
    path = sqlite_path(uri)
    if path is None:
        return None
    if path.is_dir():
        return f"{path} is a directory, not a database file"
    if not path.parent.is_dir():
        return f"the directory {path.parent} does not exist"
    connection: sqlite3.Connection | None = None
    try:
        connection = sqlite3.connect(str(path), timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        connection.execute("PRAGMA schema_version").fetchone()
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute("CREATE TABLE promptfit_store_probe (x INTEGER)")
        finally:
            connection.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc).lower() or "busy" in str(exc).lower():
            return None  # another process is writing: busy, not broken
        return f"{path}: {exc}"
    except sqlite3.DatabaseError as exc:  # "file is not a database"
        return f"{path}: {exc}"
    except OSError as exc:
        return f"{path}: {exc}"
    finally:
        if connection is not None:
            with contextlib.suppress(sqlite3.Error):
                connection.close()
    return None


def check_store(uri: str) -> bool:
    """Probe a local store; on failure record it as unusable and warn ONCE. True if usable.

    Shares the reachability registry of :mod:`promptfit.observability.mlflow_backend`, so
    spans become no-ops for this store and the Monitor, the tracer and MLflow's exporter threads
    stay silent instead of each warning in turn. Stores that are not local always pass (a
    server's health is judged by the calls themselves).
    """
    from promptfit.observability import mlflow_backend as health

    problem = local_store_problem(uri)
    if problem is None:
        if uri in health._unreachable and sqlite_path(uri) is not None:
            health.mark_reachable(uri)  # fixed since the last check
        return True
    with health._health_lock:
        health._unreachable.add(uri)
        first = uri not in health._warned
        health._warned.add(uri)
    logger.debug("MLflow store %s is unusable: %s", uri, problem)
    if first:
        warnings.warn(
            f"promptfit: the MLflow store {health.redact_uri(uri)} cannot be used ({problem}). "
            "Tracking and tracing are off for it; training runs at full speed. Fix: remove or "
            "repair that file, make its directory writable, or pass another store, e.g. "
            "pf.enable_observability('sqlite:////tmp/mlflow.db').",
            RuntimeWarning,
            stacklevel=3,
        )
    return False
