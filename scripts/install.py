#!/usr/bin/env python3
"""Install promptfit from this checkout into the current Python environment.

The README's main job runs ``python scripts/install.py && promptfit quickstart``; the test
command (``scripts/test.sh``) runs ``python scripts/install.py --extras dev,docs,local``.

Why a script and not a bare ``pip install -e ".[local]"``: pip would compile llama.cpp for every
instruction set the build machine's CPU *advertises* (AVX-512, AMX), which crashes with SIGILL
on machines that advertise more than they run, and pip's wheel cache would then reuse that
native wheel forever. With the ``local`` extra, this script first installs promptfit's portable
llama.cpp build (see ``promptfit/language_models/native_build.py``, built once per machine and
kept in promptfit's cache), then the package, then checks in a child process that the
embedded model loads and decodes a token. It uses only the standard library and pip.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _native_build():  # type: ignore[no-untyped-def]
    """Load native_build.py by path: promptfit and its dependencies are not installed yet."""
    path = ROOT / "promptfit" / "language_models" / "native_build.py"
    spec = importlib.util.spec_from_file_location("_promptfit_native_build", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--extras",
        default="local",
        help="comma-separated extras of pyproject.toml (default: local; tests: dev,docs,local)",
    )
    parser.add_argument("--force-rebuild", action="store_true", help="rebuild llama.cpp")
    args = parser.parse_args()
    extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    pip = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check"]
    native = _native_build() if "local" in extras else None
    target = f"{ROOT}[{','.join(extras)}]" if extras else str(ROOT)
    try:
        if native is not None:
            native.ensure_portable_llama_cpp(force=args.force_rebuild)
        subprocess.run([*pip, "--quiet", "-e", target], check=True)
    except (subprocess.CalledProcessError, OSError) as error:
        # pip has printed its reason; a traceback would only bury it.
        if native is not None:
            print(f"\ninstall.py failed. {native.pip_failure_message(error)}", file=sys.stderr)
        else:
            print(f"\ninstall.py failed: {error}", file=sys.stderr)
        return 1
    if native is None:
        return 0
    # The check the library itself runs before its first in-process load, done now so that a
    # broken build fails the install with a clear message rather than the first fit.
    probe = [
        sys.executable,
        "-c",
        "from promptfit.language_models import local;"
        "local._check_native_library('gemma-3-270m', local.resolve_model_path('gemma-3-270m'))",
    ]
    done = subprocess.run(probe, capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        reason = lines[-1] if lines else f"the check process exited with {done.returncode}"
        print(reason, file=sys.stderr)
        return 1
    print("The embedded model loads and decodes on this machine.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
