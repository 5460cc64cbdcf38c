#!/usr/bin/env bash
# The main job from nothing: environment, a synthetic dataset, a quick model, then embed,
# extract and evaluate on held-out images. Everything lands in demo_out/.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
bash scripts/setup_env.sh
WM=.venv/bin/wm
OUT=demo_out
rm -rf "$OUT"
mkdir -p "$OUT"

echo "== 1. synthetic data: 300 training images, 60 held-out images (another seed)"
$WM data synth "$OUT/train" --n 300 --size 256 --seed 1
$WM data synth "$OUT/held_out" --n 60 --size 256 --seed 2

echo "== 2. train the quick preset (floor 40 dB, 256 raw bits)"
$WM train "$OUT/train" --preset quick --out "$OUT/model"

echo "== 3. embed and extract one held-out image and one real CT slice (pydicom-data)"
HELD=$(ls "$OUT"/held_out/*.png | head -n 1)
$WM embed "$HELD" "audit:7f3a9c" --model "$OUT/model" -o "$OUT/marked.png"
$WM extract "$OUT/marked.png" --model "$OUT/model"
CT=$(.venv/bin/python -c "from pydicom.data import get_testdata_file; print(get_testdata_file('693_J2KR.dcm'))")
$WM embed "$CT" "ct-demo-0001" --model "$OUT/model" -o "$OUT/ct.wm.dcm"
$WM extract "$OUT/ct.wm.dcm" --model "$OUT/model"

echo "== 4. evaluate on the 60 held-out images (no attack, then a few attacks)"
$WM evaluate "$OUT/held_out" --model "$OUT/model" --attacks identity,png16,noise:0.01,window8,jpeg:90 \
  --messages 3 --report "$OUT/report"

echo "== done in $(( $(date +%s) - started )) s; report in $OUT/report, model in $OUT/model"
