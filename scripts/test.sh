#!/usr/bin/env bash
# The test suite, from nothing: environment, then pytest.
#   bash scripts/test.sh          the fast lane (about a minute on 2 cores): every test not marked slow,
#                                 on two processes (pytest-xdist) with one math thread each
#   bash scripts/test.sh --all    every test, one at a time (what CI runs: the slow lane starts
#                                 Orthanc, Dask clusters and killed processes, which want the machine)
# Other arguments go to pytest (e.g. tests/test_cli.py -k json; -n 0 runs the fast lane in one process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
lane=fast
arguments=()
for argument in "$@"; do
  if [ "$argument" = --all ]; then lane=all; else arguments+=("$argument"); fi
done
if [ "$lane" = fast ]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # two processes on two cores: no oversubscribed thread pools
  exec .venv/bin/python -m pytest --lane fast -n "${WM_TEST_PROCESSES:-2}" "${arguments[@]}"
fi
exec .venv/bin/python -m pytest --lane all "${arguments[@]}"
