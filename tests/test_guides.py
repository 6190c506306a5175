"""The guides, the examples and the documentation site must keep working.

Every guide (``guides/NN_*.py``) and every example (``examples/*/main.py``) runs as a
subprocess on the deterministic test server (``PROMPTFIT_GUIDE_LM=fake``) and must exit 0.
Scripts spend most of their time importing promptfit and starting their server, so the
selected scripts are started together in a small pool when the first of these tests runs,
and each test waits for its own script. ``PROMPTFIT_GUIDE_WORKERS`` sets the pool size.

The last test builds the documentation with ``mkdocs build --strict`` (skipped when mkdocs is
not installed: ``pip install -e '.[docs]'``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDES = sorted((ROOT / "guides").glob("[0-9][0-9]_*.py"))
EXAMPLES = sorted((ROOT / "examples").glob("*/main.py"))
SCRIPTS = [*GUIDES, *EXAMPLES]
TIMEOUT = 120.0
WORKERS = int(os.environ.get("PROMPTFIT_GUIDE_WORKERS", "4"))


def _script_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@dataclass
class ScriptRun:
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    def report(self) -> str:
        return (
            f"exit code {self.returncode} after {self.seconds:.1f} s\n"
            f"--- stdout ---\n{self.stdout[-6000:]}\n--- stderr ---\n{self.stderr[-6000:]}"
        )


def _run(script: Path, out: Path) -> ScriptRun:
    env = {**os.environ, "PROMPTFIT_GUIDE_LM": "fake", "PYTHONUNBUFFERED": "1"}
    env.pop("PROMPTFIT_GUIDE_API_BASE", None)
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, str(script), "--out", str(out)],
            cwd=out,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        return ScriptRun(
            None,
            _text(expired.stdout),
            _text(expired.stderr) + f"\nTIMEOUT after {TIMEOUT} s",
            time.perf_counter() - started,
        )
    return ScriptRun(done.returncode, done.stdout, done.stderr, time.perf_counter() - started)


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value or ""


@pytest.fixture(scope="module")
def script_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[Path, Future[ScriptRun]]]:
    """Start every selected script at once (bounded pool); tests collect their own result."""
    selected = [
        item.callspec.params["script"]
        for item in request.session.items
        if getattr(item, "module", None) is request.module
        and hasattr(item, "callspec")
        and "script" in item.callspec.params
    ]
    pool = ThreadPoolExecutor(max_workers=max(1, WORKERS))
    futures: dict[Path, Future[ScriptRun]] = {}
    for script in dict.fromkeys(selected):
        out = tmp_path_factory.mktemp(re.sub(r"\W", "_", _script_id(script)))
        futures[script] = pool.submit(_run, script, out)
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def test_every_guide_and_example_was_found() -> None:
    numbers = [int(path.name[:2]) for path in GUIDES]
    assert numbers == list(range(1, len(GUIDES) + 1)), "guides are numbered 01, 02, ... in order"
    assert len(GUIDES) >= 13
    assert {path.parent.name for path in EXAMPLES} >= {"classification", "extraction", "two_step"}


@pytest.mark.parametrize("script", SCRIPTS, ids=_script_id)
def test_script_runs_on_the_test_server(
    script: Path, script_runs: dict[Path, Future[ScriptRun]]
) -> None:
    run = script_runs[script].result()
    print(f"{_script_id(script)}: {run.seconds:.1f} s")  # shown with pytest -rP
    assert run.returncode == 0, f"{_script_id(script)} failed: {run.report()}"
    assert "Traceback" not in run.stderr, run.report()
    assert "fake test server" in run.stdout, "the script must say which backend it used"


@pytest.mark.parametrize("script", SCRIPTS, ids=_script_id)
def test_script_teaches_in_its_docstring(script: Path) -> None:
    import ast

    docstring = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8")))
    assert docstring and len(docstring.split()) >= 60, "open with a docstring that explains why"
    assert "Run it" in docstring, "say how to run it"


@pytest.mark.parametrize("script", GUIDES, ids=_script_id)
def test_guide_has_a_docs_page(script: Path) -> None:
    page = ROOT / "docs" / "guides" / f"{script.stem}.md"
    assert page.is_file(), f"add {page.relative_to(ROOT)}"
    assert f'--8<-- "guides/{script.name}"' in page.read_text(encoding="utf-8")
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert f"guides/{script.stem}.md" in nav, "list the page in mkdocs.yml's nav"


def test_docs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="install the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("material", reason="install the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings", reason="install the docs extra: pip install -e '.[docs]'")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()
