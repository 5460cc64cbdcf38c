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
# Debian packages the tests use as real peers: dcmtk (`dcmj2pnm` makes the exports a viewer or
# PACS makes; `dcmsign` checks signatures; `storescu` sends to `wm serve`) and orthanc (the
# archive `wm serve` forwards to; the tests start their own, on loopback ports).
missing=()
command -v dcmj2pnm >/dev/null 2>&1 && command -v dcmsign >/dev/null 2>&1 || missing+=(dcmtk)
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # orthanc's package would start a system service; policy-rc.d keeps it from starting here.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1; fi
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null
    if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi
  else
    echo "setup: ${missing[*]} not installed and cannot be installed here (not root or no apt-get);" \
         "the tests against real DICOM peers will fail: install the Debian packages ${missing[*]}" >&2
  fi
fi
