#!/usr/bin/env bash
# Retrain the shipped default model, wm-keyed-v3, from scratch (about 85 minutes on 2 CPU cores,
# less on a GPU), then measure it on the held-out real images and write the figures into its card.
#   bash scripts/train_default_model.sh [OUT]      (default OUT: models/default; must not exist)
# Three stages, each from the one before: the unkeyed carrier model (what wm-default-v2 is), the
# keyed model (a fresh random key field per image: one model serves every key), then the public
# synchronisation pilot added. A keyed model is hard to learn from scratch on a CPU; warm-started
# from an unkeyed one it reads 98 % of raw bits after a few steps.
# On the lent GPU machine, scripts/on_device.sh runs the same stages with WM and PYTHON set to its
# python3 (no set-up there, WM_SETUP=0) and leaves the measuring to this machine (WM_MEASURE=0).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-models/default}
[ "${WM_SETUP:-1}" = 0 ] || bash scripts/setup_env.sh
WM=${WM:-.venv/bin/wm}
PYTHON=${PYTHON:-.venv/bin/python}
DATA=runs/default_data
STAGES=runs/default_stages
rm -rf "$DATA" "$STAGES"
# Real images: the training split of pydicom-data's clinical DICOMs (the held-out split is
# never copied here). Synthetic images: 400 CT/MR/radiograph-like 256² images, seed 5.
# The folder names matter: the validation split hashes each file's name and folder name.
$WM data clinical "$DATA/train" --split train
$WM data synth "$DATA/synstd" --n 400 --seed 5
$WM train "$DATA/train" "$DATA/synstd" --preset standard --out "$STAGES/unkeyed"
$WM train "$DATA/train" "$DATA/synstd" --preset standard --out "$STAGES/keyed" --epochs 16 \
  --set key_field_sigma=1.0 --set pilot=0.3 --set init_from="$STAGES/unkeyed" \
  --set tau_initial=10 --set learning_rate=0.001 --set learning_rate_final=0.0001
$WM train "$DATA/train" "$DATA/synstd" --preset standard --out "$OUT" --epochs 10 \
  --set key_field_sigma=1.0 --set pilot=0.3 --set sync_pilot=0.5 --set init_from="$STAGES/keyed" \
  --set tau_initial=40 --set learning_rate=0.0007 --set learning_rate_final=0.0001
rm -f "$OUT/checkpoint.pt"  # only needed to resume training; the shipped model is weights + card
$PYTHON - "$OUT" <<'PY'
import sys
from pathlib import Path


from watermark_cli.model.store import read_card, write_card

card = read_card(Path(sys.argv[1]))
# The unkeyed model shipped before it: its marks stay readable, flagged as unprotected.
card["reads_marks_of"] = ["wm-default-v2"]
write_card(Path(sys.argv[1]), card)
PY
[ "${WM_MEASURE:-1}" = 0 ] || $PYTHON benchmarks/model_quality.py --model "$OUT" --messages 3 --message-bytes 8 --write-card --name wm-keyed-v3
