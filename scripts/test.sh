#!/usr/bin/env bash
# The test suite, from nothing: environment, then pytest.
#   bash scripts/test.sh          the fast lane (about two minutes on 2 cores): every test not marked slow
#   bash scripts/test.sh --all    every test (what CI runs); other arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
lane=fast
arguments=()
for argument in "$@"; do
  if [ "$argument" = --all ]; then lane=all; else arguments+=("$argument"); fi
done
exec .venv/bin/python -m pytest --lane "$lane" "${arguments[@]}"
