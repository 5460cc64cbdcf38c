#!/usr/bin/env bash
# Create .venv (if missing) and install wm with its test extras; install dcmtk and orthanc, the
# real DICOM peers the tests talk to. Idempotent and quiet: a second run with nothing changed
# installs nothing and prints nothing; a failing install prints its log.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
log=.venv/setup.log
quietly() {  # run a command with its output in the log; show the log if it fails
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup: failed: $*" >&2
    exit 1
  fi
}
# torch first, pinned to the releases this project is tested with (pip takes them from the local
# cache when present); then the project itself, editable, with the test tools. The project is
# installed again only when pyproject.toml changed or the install does not point at this checkout.
torch_pins=(torch==2.14.1 torchvision==0.29.1)
if ! .venv/bin/python - "${torch_pins[@]}" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(not all(version(name) == wanted for name, wanted in (pin.split("==") for pin in sys.argv[1:])))
PY
then
  quietly .venv/bin/pip install --quiet --upgrade pip
  quietly .venv/bin/pip install --quiet "${torch_pins[@]}"
fi
root=$(pwd)
stamp=.venv/wm-installed
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1) $root"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ] || ! (cd / && "$root/.venv/bin/python" -c \
     "import sys, watermark_cli; sys.exit(not watermark_cli.__file__.startswith(sys.argv[1]))" "$root/" 2>/dev/null); then
  quietly .venv/bin/pip install --quiet -e '.[dev]'
  echo "$wanted" > "$stamp"
fi
# wm's compiled kernels (numba, `watermark_cli/compiled.py`): compiled here, once, and kept beside
# their modules, rather than by the first command or test that loads them (seconds each).
quietly .venv/bin/python -c "import watermark_cli.polar_decoder, watermark_cli.marking.fold_kernel"
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
    echo "setup: installing ${missing[*]} (Debian packages)" >&2
    quietly apt-get update -qq
    quietly env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi
  else
    echo "setup: ${missing[*]} not installed and cannot be installed here (not root or no apt-get);" \
         "the tests against real DICOM peers will fail: install the Debian packages ${missing[*]}" >&2
  fi
fi
