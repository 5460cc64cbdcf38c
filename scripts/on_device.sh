#!/usr/bin/env bash
# What to run on the lent GPU machine (the `device` tool), once `bash scripts/device_kit.sh` has
# made .device/ here:
#   run(command="bash scripts/on_device.sh TASK [ARGS]", carry=[".device"], timeout_s=540)
# TASK:
#   check          the GPU, the packages, `wm models` (seconds; the machine's start is the cost)
#   speed          benchmarks/speed.py on the GPU: issue 30's figures (whole runs of 160 CTs, a
#                  worker per core), into $OUT/speed.txt
#   tests          the tests that need a GPU (tests/test_device.py), into $OUT/tests.txt
#   train ARGS...  wm train on the clinical training split and 400 synthetic images (the
#                  shipped default's data) on the GPU, into $OUT/model; ARGS go to wm train
#   default        the shipped default's three stages (scripts/train_default_model.sh) into
#                  $OUT/model; measure it on this machine afterwards (benchmarks/model_quality.py)
# Tasks may follow each other, separated by ';' in one command (one start for all). What comes
# back: $OUT's files (weights, card, metrics; a checkpoint over 16 MiB does not) and $OUT/log.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device}  # the device tool sets OUT; run elsewhere, a folder of runs/
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
[ -d .device/wheels ] || { echo "on_device: no .device/ (run scripts/device_kit.sh, then carry .device)"; exit 2; }
site=${WM_DEVICE_SITE:-${TMPDIR:-/tmp}/wm-site}  # unpacked once per machine; a warm machine reuses it
if [ ! -f "$site/.complete" ]; then
  rm -rf "$site"
  python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$site" .device/wheels/*.whl
  tar -xJf .device/pydicom-data.tar.xz -C "$site"
  touch "$site/.complete"
fi
export PYTHONPATH="$site:$PWD" WM_MODELS="$PWD/models"  # wm from this checkout, not installed
WM="python3 -m watermark_cli"
DATA=runs/default_data

prepare_data() {  # the shipped default's training data (scripts/train_default_model.sh)
  [ -d "$DATA/train" ] || $WM data clinical "$DATA/train" --split train
  [ -d "$DATA/synstd" ] || $WM data synth "$DATA/synstd" --n 400 --seed 5
}

task=${1:-check}
shift || true
started=$(date +%s)
case "$task" in
  check)
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
    $WM models
    ;;
  speed)
    python3 benchmarks/speed.py --device cuda --networks 64 --repeats 5 --marginal 160 --marginal-runs 1 \
      | tee "$OUT/speed.txt"
    ;;
  tests)
    python3 -m pytest -q -p no:cacheprovider -n 0 tests/test_device.py | tee "$OUT/tests.txt"
    ;;
  train)
    prepare_data
    $WM train "$DATA/train" "$DATA/synstd" --out "$OUT/model" "$@"
    ;;
  default)
    WM="$WM" PYTHON=python3 WM_SETUP=0 WM_MEASURE=0 bash scripts/train_default_model.sh "$OUT/model"
    ;;
  *)
    echo "on_device: unknown task $task (check, speed, tests, train, default)"
    exit 2
    ;;
esac
echo "on_device: $task took $(( $(date +%s) - started )) s"
