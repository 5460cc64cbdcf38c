#!/usr/bin/env bash
# Create .venv (if missing) and install wm with its test extras. Idempotent and quiet.
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
