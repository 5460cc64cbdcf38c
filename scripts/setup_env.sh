#!/usr/bin/env bash
# Create .venv (if missing) and install wm with its test extras; install dcmtk, whose exports the
# tests read marks back from. Idempotent and quiet.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch first, pinned to the releases this project is tested with (pip takes them from the local
# cache when present); then the project itself, editable, with the test tools.
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1
fi
.venv/bin/pip install --quiet -e '.[dev]'
# dcmtk (Debian package): `dcmj2pnm` makes the exports a real DICOM viewer or PACS makes.
if ! command -v dcmj2pnm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk) >/dev/null
  else
    echo "setup: dcmtk is not installed and cannot be installed here (not root or no apt-get);" \
         "the tests of dcmtk exports will fail: install the 'dcmtk' package" >&2
  fi
fi
