"""The installer's portable llama.cpp build cannot be defeated by a cached native wheel.

Why: issue 8 found that pip's wheel cache keys a built wheel by the source archive, not by
``CMAKE_ARGS``, so a llama-cpp-python built once with native flags (AVX-512/AMX, crashing with
SIGILL on machines that advertise more than they run) is silently reused by later installs.
``native_build.ensure_portable_llama_cpp`` (run by ``scripts/install.py`` and
``promptfit setup-local``) builds with pip's cache off and keeps the wheel in promptfit's own
cache under a key of the build flags.

Building the real llama.cpp takes 8+ minutes of both cores, so these tests build a stand-in:
a source archive named ``llama_cpp_python-0.3.36.tar.gz`` whose in-tree build backend records
the ``CMAKE_ARGS`` it was built with in the package. Everything else is real: a fresh virtual
environment, pip, its wheel cache (filled first with a native build, as a plain
``pip install -e ".[local]"`` would), and promptfit's installer code.

Also: a build that fails (no compiler, no index) ends with promptfit's explanation and a
non-zero status, not a Python traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from promptfit.language_models import native_build

ROOT = Path(__file__).resolve().parents[1]
VERSION = native_build.LLAMA_CPP_VERSION

_BACKEND = '''
"""A PEP 517 backend that builds llama_cpp, recording the CMAKE_ARGS of the build."""
import base64, hashlib, os, zipfile

NAME, VERSION = "llama_cpp_python", "{version}"


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    dist_info = f"{{NAME}}-{{VERSION}}.dist-info"
    files = {{
        "llama_cpp/__init__.py": f"CMAKE_ARGS = {{os.environ.get('CMAKE_ARGS', '')!r}}\\n",
        f"{{dist_info}}/METADATA": (
            f"Metadata-Version: 2.1\\nName: llama-cpp-python\\nVersion: {{VERSION}}\\n"
        ),
        f"{{dist_info}}/WHEEL": (
            "Wheel-Version: 1.0\\nGenerator: stand-in\\nRoot-Is-Purelib: true\\n"
            "Tag: py3-none-any\\n"
        ),
    }}
    name = f"{{NAME}}-{{VERSION}}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as wheel:
        for path, text in files.items():
            data = text.encode()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{{path}},sha256={{digest.decode()}},{{len(data)}}")
            wheel.writestr(path, data)
        record.append(f"{{dist_info}}/RECORD,,")
        wheel.writestr(f"{{dist_info}}/RECORD", "\\n".join(record) + "\\n")
    return name
'''

_PYPROJECT = """
[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]
"""


def _stand_in_index(directory: Path) -> Path:
    """A find-links directory holding the stand-in source archive of llama-cpp-python."""
    source = directory / "src" / f"llama_cpp_python-{VERSION}"
    source.mkdir(parents=True)
    (source / "backend.py").write_text(_BACKEND.format(version=VERSION))
    (source / "pyproject.toml").write_text(_PYPROJECT)
    (source / "PKG-INFO").write_text(
        f"Metadata-Version: 2.1\nName: llama-cpp-python\nVersion: {VERSION}\n"
    )
    index = directory / "index"
    index.mkdir()
    with tarfile.open(index / f"llama_cpp_python-{VERSION}.tar.gz", "w:gz") as archive:
        archive.add(source, arcname=source.name)
    return index


def _env(tmp_path: Path, index: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("CMAKE_ARGS", "PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")
    }
    env.update(
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(index),
        PIP_CACHE_DIR=str(tmp_path / "pip-cache"),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PROMPTFIT_CACHE_DIR=str(tmp_path / "promptfit-cache"),
        **extra,
    )
    return env


def _run(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


_ENSURE = (
    "import sys; sys.path.insert(0, {where!r}); import native_build; "
    "native_build.ensure_portable_llama_cpp(); "
    "print('PORTABLE', native_build.installed_is_portable())"
).format(where=str(ROOT / "promptfit" / "language_models"))
_BUILT_WITH = "import llama_cpp; print(llama_cpp.CMAKE_ARGS)"


@pytest.fixture()
def venv(tmp_path: Path) -> Path:
    """A fresh virtual environment (pip, no promptfit, no llama-cpp-python)."""
    path = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
    return path / "bin" / "python"


def test_a_cached_native_wheel_cannot_stand_in_for_the_portable_build(
    tmp_path: Path, venv: Path
) -> None:
    index = _stand_in_index(tmp_path)
    env = _env(tmp_path, index)
    # First, what a plain `pip install -e ".[local]"` did on the machine: a native
    # build, installed, and cached by pip under the source archive.
    native = _env(tmp_path, index, CMAKE_ARGS="-DGGML_NATIVE=ON")
    _run([str(venv), "-m", "pip", "install", f"llama-cpp-python=={VERSION}"], native)
    assert "-DGGML_NATIVE=ON" in _run([str(venv), "-c", _BUILT_WITH], env)
    cached = list((tmp_path / "pip-cache").rglob("*.whl"))
    assert cached, "pip did not cache the native wheel: the test's premise does not hold"

    # Then promptfit's installer: the portable build replaces the native one.
    out = _run([str(venv), "-c", _ENSURE], env)
    assert "PORTABLE True" in out
    built_with = _run([str(venv), "-c", _BUILT_WITH], env)
    assert "-DGGML_NATIVE=OFF" in built_with
    for flag in ("AVX512", "AVX512_VNNI", "AVX512_BF16", "AMX_TILE", "AMX_INT8", "AMX_BF16"):
        assert f"-DGGML_{flag}=OFF" in built_with
    # The native wheel is still in pip's cache; installing the `local` extra's requirement
    # afterwards (what `pip install -e ".[local]"` asks for) keeps the portable build.
    assert all(path.exists() for path in cached)
    _run([str(venv), "-m", "pip", "install", "llama-cpp-python>=0.3.8"], env)
    assert "-DGGML_NATIVE=OFF" in _run([str(venv), "-c", _BUILT_WITH], env)

    # A second virtual environment reuses promptfit's cached portable wheel: no new build.
    second = tmp_path / "venv2"
    subprocess.run([sys.executable, "-m", "venv", str(second)], check=True, timeout=300)
    out = _run([str(second / "bin" / "python"), "-c", _ENSURE], env)
    assert "Building" not in out and "PORTABLE True" in out
    assert "-DGGML_NATIVE=OFF" in _run([str(second / "bin" / "python"), "-c", _BUILT_WITH], env)


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "promptfit.cli", "setup-local"],
        [sys.executable, str(ROOT / "scripts" / "install.py")],
    ],
    ids=["setup-local", "install.py"],
)
def test_a_failed_build_is_explained_not_a_traceback(tmp_path: Path, command: list[str]) -> None:
    """No llama-cpp-python to be found (no index, no compiler alike): pip fails, and promptfit
    says what that means and what to run next; nothing is installed."""
    empty = tmp_path / "empty-index"
    empty.mkdir()
    env = _env(tmp_path, empty, PYTHONPATH=str(ROOT))
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "`pip wheel` failed" in done.stderr
    assert "C/C++ compiler" in done.stderr
    assert native_build.SETUP_COMMAND in done.stderr
