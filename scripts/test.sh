#!/usr/bin/env bash
# The test suite, from nothing: environment, then pytest.
#   bash scripts/test.sh          the fast lane (two or three minutes on 2 cores): every test not marked slow,
#                                 on two processes (pytest-xdist) with one math thread each
#   bash scripts/test.sh --all    every test (what CI runs): the fast lane on two processes, its time
#                                 guard off (a slow machine is no failure), then the slow lane: on two
#                                 processes, a test file to each at a time, but for the tests marked
#                                 exclusive (Orthanc, Dask clusters, processes killed or timed, which
#                                 want the machine), one at a time after the rest; fails if any part does
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
# The first failure's status is the run's; pytest's 5 is "no test selected" (arguments that pick
# tests of one lane only), not a failure.
status=0
failed() { [ "$1" = 5 ] || [ "$status" != 0 ] || status=$1; }
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} WM_FAST_TEST_SECONDS=inf \
  .venv/bin/python -m pytest --lane fast -n "${WM_TEST_PROCESSES:-2}" "${arguments[@]}" || failed $?
# The slow lane: a test file to each process (--dist loadfile: a file's costly module fixtures are
# built once), then the tests marked exclusive, one at a time.
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} .venv/bin/python -m pytest --lane slow -m "not exclusive" \
  -n "${WM_TEST_PROCESSES:-2}" --dist loadfile "${arguments[@]}" || failed $?
.venv/bin/python -m pytest --lane slow -m exclusive "${arguments[@]}" || failed $?
exit "$status"
