"""Issue 11 item 6: an unusable ``./mlflow.db`` is detected once, quickly, with one warning.

MLflow's own SQLite store retries a database it cannot open for about 205 s (and again for
every client), logging "Operation will be retried" each time. The guard is structural: MLflow
must never be asked to open the broken store (no retry log line), ``enable_observability`` and
the fit show exactly one promptfit warning, and the fit is tracked by nobody.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import arithmetic_data

from promptfit.callbacks.monitor import Monitor
from promptfit.observability.enable import disable_observability, enable_observability
from promptfit.observability.mlflow_backend import is_unreachable, mark_reachable
from promptfit.observability.store_check import check_store, local_store_problem


@pytest.fixture(autouse=True)
def _observability_off() -> Iterator[None]:
    yield
    disable_observability()


def _breakers() -> dict[str, Callable[[Path], None]]:
    def directory(path: Path) -> None:
        path.mkdir()

    def not_a_database(path: Path) -> None:
        path.write_bytes(b"this is not an SQLite database, just some bytes\n" * 20)

    def unwritable(path: Path) -> None:
        # A valid database whose writes fail, for root too (chmod does not stop root): SQLite
        # cannot create its rollback journal where a directory of that name stands.
        import sqlite3

        sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
        (path.parent / f"{path.name}-journal").mkdir()

    def read_only(path: Path) -> None:
        # The case: a valid ./mlflow.db that cannot be written (MLflow retried it for
        # 205 s). chmod does not stop root, so root marks the file immutable instead.
        import sqlite3

        sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
        if os.geteuid() != 0:
            path.chmod(0o444)
            path.parent.chmod(0o555)
        elif (
            shutil.which("chattr") is None
            or subprocess.run(
                ["chattr", "+i", str(path)], capture_output=True, check=False
            ).returncode
        ):
            pytest.skip("root without chattr +i cannot make a file read-only")

    return {
        "directory": directory,
        "not_a_database": not_a_database,
        "unwritable": unwritable,
        "read_only": read_only,
    }


def _writable_again(path: Path) -> None:
    """Undo ``read_only`` so pytest can delete the directory."""
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run(["chattr", "-i", str(path)], capture_output=True, check=False)
    path.parent.chmod(0o755)
    if path.is_file():
        path.chmod(0o644)


@pytest.mark.parametrize("kind", sorted(_breakers()))
def test_unusable_store_one_warning_and_mlflow_never_retries(
    kind: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    calc_program: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.chdir(tmp_path)
    _breakers()[kind](tmp_path / "mlflow.db")
    request.addfinalizer(lambda: _writable_again(tmp_path / "mlflow.db"))
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    mark_reachable(uri)
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        assert enable_observability() == uri
        program = asyncio.run(calc_program())
        x, y = arithmetic_data(6)
        history = asyncio.run(program.fit(x, y, epochs=3, batch_size=3, verbose=0))
    ours = [str(r.message) for r in records if str(r.message).startswith("promptfit:")]
    assert len(ours) == 1, ours
    assert "cannot be used" in ours[0] and "mlflow.db" in ours[0] and "Fix:" in ours[0]
    assert len(history.epoch) == 3
    monitors = [c for c in program.fit_state.callbacks if isinstance(c, Monitor)]
    assert len(monitors) == 1 and monitors[0].run_id is None
    retried = [r.getMessage() for r in caplog.records if "retried" in r.getMessage()]
    assert not retried, retried[:2]  # MLflow was never asked to open the broken store
    assert is_unreachable(uri)


def test_probe_passes_new_and_valid_stores_and_recovers(tmp_path: Path) -> None:
    fresh = f"sqlite:///{tmp_path / 'new.db'}"
    assert local_store_problem(fresh) is None
    assert local_store_problem("http://127.0.0.1:1") is None  # servers are judged by calls
    missing_dir = f"sqlite:///{tmp_path / 'nope' / 'x.db'}"
    assert "does not exist" in (local_store_problem(missing_dir) or "")
    broken = tmp_path / "broken.db"
    broken.mkdir()
    uri = f"sqlite:///{broken}"
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        assert not check_store(uri) and not check_store(uri)
    assert len(records) == 1  # once per store, not per check
    broken.rmdir()
    assert check_store(uri) and not is_unreachable(uri)  # fixed: tracking comes back


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only files")
def test_read_only_store_is_unusable(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "ro.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    path.chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        assert "readonly" in (local_store_problem(f"sqlite:///{path}") or "")
    finally:
        tmp_path.chmod(0o755)
