#!/usr/bin/env bash
# Retrain the shipped default model from scratch (about 25 minutes on 2 CPU cores, less on a GPU),
# then measure it on the held-out real images and write the figures into its card.
#   bash scripts/train_default_model.sh [OUT]      (default OUT: models/default; must not exist)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-models/default}
bash scripts/setup_env.sh
WM=.venv/bin/wm
DATA=runs/default_data
rm -rf "$DATA"
# Real images: the training split of pydicom-data's clinical DICOMs (the held-out split is
# never copied here). Synthetic images: 400 CT/MR/radiograph-like 256² images, seed 5.
# The folder names matter: the validation split hashes each file's name and folder name.
$WM data clinical "$DATA/train" --split train
$WM data synth "$DATA/synstd" --n 400 --seed 5
$WM train "$DATA/train" "$DATA/synstd" --preset standard --out "$OUT"
rm -f "$OUT/checkpoint.pt"  # only needed to resume training; the shipped model is weights + card
.venv/bin/python benchmarks/model_quality.py --model "$OUT" --messages 5 --write-card --name wm-default-v2
