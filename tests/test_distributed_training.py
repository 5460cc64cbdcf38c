"""Data-parallel training: two CPU processes on the gloo backend, started by torchrun."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.exclusive]  # wants the machine to itself


def test_two_gloo_processes_train_one_model_with_per_sample_state_kept_in_step(tmp_path):
    from watermark_cli.data.synthetic import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(data, 6, size=128, seed=5)
    out = tmp_path / "model"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Per-sample tau grown every step: if the processes did not share their observations, their
    # coefficients would differ, and the per-epoch agreement check would stop the run.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "watermark_cli", "train", str(data), "--out", str(out), "--device", "cpu",
               "--bits", "128", "--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "4",
               "--method", "sequential", "--tau-scope", "per-sample", "--psnr-min", "46",
               "--set", "tau_period=1", "--set", "train_samples=16", "--set", "validation_crops=6",
               "--set", "validation_crop=64", "--json"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment)
    assert completed.returncode == 0, completed.stderr[-3000:]
    # One writer: one summary line on stdout, one model folder.
    summaries = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1
    assert sorted(p.name for p in out.iterdir()) == ["card.yaml", "checkpoint.pt", "metrics.csv", "metrics.png",
                                                     "weights.safetensors"]
    card = yaml.safe_load((out / "card.yaml").read_text())
    assert card["training"]["processes"] == 2
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # Each step consumed 2 processes × 4 samples; the tau of observed violated samples grew.
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert float(rows[-1]["coefficient_max"]) > float(card["training"]["config"]["tau_initial"])
