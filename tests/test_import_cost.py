"""``import promptfit`` stays cheap: the heavy libraries load only when something needs them.

Not a timing test (timings are in docs/benchmarks.md): it checks *what* gets imported, which is
what made ``import promptfit`` take seconds (litellm alone was 2.7 s of 3.4 s).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HEAVY = ("litellm", "pandas", "aiohttp", "mlflow")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize("module", HEAVY)
def test_import_promptfit_does_not_import(module: str) -> None:
    result = _run(f"import promptfit, sys; assert {module!r} not in sys.modules, 'imported'")
    assert result.returncode == 0, result.stderr


def test_a_client_of_an_own_server_needs_no_litellm() -> None:
    code = (
        "import promptfit as pf, sys\n"
        "lm = pf.LanguageModel('openai/my-model', api_base='http://127.0.0.1:9/v1', "
        "api_key='x')\n"
        "assert lm.transport == 'http', lm.transport\n"
        "assert 'litellm' not in sys.modules\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr


def test_cli_help_does_not_import_litellm() -> None:
    code = (
        "import sys, runpy\n"
        "sys.argv = ['promptfit', '--help']\n"
        "try:\n"
        "    runpy.run_module('promptfit.cli', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'litellm' not in sys.modules\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
