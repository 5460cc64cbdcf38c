"""`wm train` as a run: every method, the config file, checkpoints and bit-exact resume, bad data."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from conftest import run_wm, run_wm_here

# A few seconds of training per run: 128 bits (the fewest a payload v2 fits in: 5 bytes), 64² crops,
# tiny validation set.
TINY = ["--bits", "128", "--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "4",
        "--set", "train_samples=8", "--set", "validation_crops=4", "--set", "validation_crop=64"]
METRIC_COLUMNS = ["epoch", "step", "seconds", "method", "coefficient_mean", "coefficient_max", "train_loss",
                  "train_bit_accuracy", "train_fraction_satisfied", "train_min_psnr", "train_mean_psnr",
                  "val_bit_accuracy", "val_fraction_satisfied", "val_min_psnr", "val_mean_psnr"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from watermark_cli.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny") / "data"
    write_synthetic_dataset(root, 8, size=128, seed=21)
    return root


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
@pytest.mark.parametrize("method, extra", [
    ("sequential", ["--tau-scope", "per-sample", "--tau-schedule", "closed-loop", "--penalty-shape", "squared_hinge"]),
    ("fixed", ["--fixed-weight", "0.5"]),
    ("lagrangian", ["--dual-optimizer", "nupi"]),
    ("augmented-lagrangian", []),
    ("projection", []),
])
def test_every_method_trains_through_the_cli_and_writes_the_same_files(tiny_data, tmp_path, method, extra):
    out = tmp_path / method
    # A floor above what the untrained encoder reaches, so that every method has work to do.
    result = run_wm("train", tiny_data, "--out", out, "--method", method, "--psnr-min", "52", *TINY, *extra, "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["method"] == method
    assert {p.name for p in out.iterdir()} == {"weights.safetensors", "card.yaml", "metrics.csv", "metrics.png",
                                               "checkpoint.pt"}
    rows = _rows(out / "metrics.csv")
    assert list(rows[0]) == METRIC_COLUMNS and [r["epoch"] for r in rows] == ["1", "2"]
    assert all(r["method"] == method for r in rows)
    card = yaml.safe_load((out / "card.yaml").read_text())
    assert card["training"]["method"] == method and card["training"]["config"]["psnr_min"] == 52.0
    if method == "projection":
        assert all(float(r["val_min_psnr"]) >= 52.0 for r in rows)  # met by construction
        assert rows[-1]["coefficient_mean"] == "nan"
    elif method in ("sequential", "fixed"):
        # Four steps, fewer than one tau period: tau is still its initial 0.1; the fixed weight
        # is what --fixed-weight said.
        assert float(rows[-1]["coefficient_max"]) == pytest.approx({"sequential": 0.1, "fixed": 0.5}[method])
    else:
        # Multipliers start at 0 and rise only by ascending on violated constraints (the floor
        # of 52 dB is above what the untrained encoder reaches).
        assert float(rows[-1]["coefficient_max"]) > 0


@pytest.fixture(scope="module")
def run_from_config_file(tiny_data, tmp_path_factory) -> Path:
    """One run described by a YAML file, with flags and --set overriding some of it."""
    folder = tmp_path_factory.mktemp("config_run")
    config = folder / "run.yaml"
    config.write_text(yaml.safe_dump({
        "data": [str(tiny_data)], "out": "from_file", "method": "fixed", "fixed-weight": 2.0, "n_bits": 128,
        "epochs": 1, "steps_per_epoch": 2, "batch_size": 4, "train_samples": 8, "validation_crops": 4,
        "validation_crop": 64, "attacks": ["identity", "noise"], "learning_rate": 0.001,
    }))
    result = run_wm("train", "--config", config, "--fixed-weight", "3", "--set", "learning_rate=5e-4", "--json")
    assert result.code == 0, result.stderr
    return folder / "from_file"  # `out` is relative to the config file's folder


@pytest.mark.slow
def test_config_file_holds_the_run_and_flags_override_it(run_from_config_file):
    trained = yaml.safe_load((run_from_config_file / "card.yaml").read_text())["training"]["config"]
    assert trained["method"] == "fixed" and trained["fixed_weight"] == 3.0 and trained["learning_rate"] == 5e-4
    assert trained["attacks"] == ["identity", "noise"] and trained["epochs"] == 1 and trained["n_bits"] == 128


@pytest.mark.slow
def test_cli_resume_extends_a_run_and_refuses_a_changed_configuration(run_from_config_file, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run_from_config_file, out)
    refused = run_wm("train", "--resume", out, "--method", "sequential")
    assert refused.code == 2 and "only --epochs and --device" in refused.stderr
    extended = run_wm("train", "--resume", out, "--epochs", "2", "--json")
    assert extended.code == 0, extended.stderr
    assert [r["epoch"] for r in _rows(out / "metrics.csv")] == ["1", "2"]
    assert yaml.safe_load((out / "card.yaml").read_text())["training"]["config"]["epochs"] == 2
    missing = run_wm("train", "--resume", tmp_path / "nothing_here")
    assert missing.code == 2 and "no checkpoint" in missing.stderr


@pytest.mark.parametrize("contents, message", [
    ({"learning_rate": "fast"}, "learning_rate must be a number"),
    ({"no_such_option": 1}, "unknown option"),
    ({"method": "magic"}, "unknown training method"),
    ({"tau_scope": "per-class"}, "unknown tau scope"),
])
def test_bad_config_is_a_one_line_error(tiny_data, tmp_path, contents, message):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(contents))
    result = run_wm_here("train", tiny_data, "--config", config, "--out", tmp_path / "m")
    assert result.code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_a_folder_with_no_usable_image_is_a_one_line_error(tmp_path):
    folder = tmp_path / "unusable"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(folder / "tiny.png")  # below 64 px
    result = run_wm_here("train", folder, "--out", tmp_path / "m")
    assert result.code == 2 and "no usable training image" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_requested_stop_writes_the_best_model_so_far_and_the_run_can_be_resumed(tiny_data, tmp_path):
    """Ctrl-C or a scheduler's SIGTERM: stop mid-epoch, drop that epoch, write the best model."""
    from watermark_cli.training import TrainingInterrupted, config_for_preset, load_checkpoint, train

    config = config_for_preset("quick", n_bits=128, epochs=3, steps_per_epoch=3, batch_size=4, train_samples=8,
                               validation_crops=4, validation_crop=64)
    calls = []

    def stop_in_the_second_epoch() -> bool:  # asked once before every step
        calls.append(1)
        return len(calls) > 4

    out = tmp_path / "stopped"
    result = train(config, [tiny_data], out, stop_requested=stop_in_the_second_epoch)
    assert result.stopped_after_epoch == 1 and [m.epoch for m in result.history] == [1]
    assert (out / "weights.safetensors").exists()
    assert yaml.safe_load((out / "card.yaml").read_text())["training"]["stopped_after_epoch"] == 1
    assert load_checkpoint(out)["epoch"] == 1  # the unfinished epoch left no trace
    resumed = train(config, [tiny_data], out, resume=True)
    assert resumed.stopped_after_epoch is None and [m.epoch for m in resumed.history] == [1, 2, 3]

    with pytest.raises(TrainingInterrupted):  # stopped before any epoch ended: nothing to write
        train(config, [tiny_data], tmp_path / "early", stop_requested=lambda: True)
    assert not (tmp_path / "early" / "weights.safetensors").exists()


@pytest.mark.slow
def test_sigterm_stops_training_gracefully_through_the_cli(tiny_data, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "m"
    # Many short epochs, so that the signal arrives mid-run whatever the machine's speed.
    process = subprocess.Popen(
        [sys.executable, "-m", "watermark_cli", "train", str(tiny_data), "--out", str(out), "--bits", "128",
         "--epochs", "500", "--steps-per-epoch", "2", "--batch-size", "4", "--set", "train_samples=8",
         "--set", "validation_crops=4", "--set", "validation_crop=64", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    summary = json.loads(stdout)
    assert 1 <= summary["stopped_after_epoch"] < 500
    assert "wm train --resume" in stderr and "Traceback" not in stderr and "interrupted" not in stderr
    assert (out / "weights.safetensors").exists() and (out / "card.yaml").exists()


@pytest.mark.slow
def test_off_a_terminal_each_epoch_is_one_plain_line_on_stderr(tiny_data, tmp_path):
    """In a job scheduler, under nohup or in CI, stderr is no terminal and a live bar shows nothing
    until the end: each epoch is one line instead, with that epoch's figures as metrics.csv holds
    them. --json still makes stdout the one JSON object."""
    out = tmp_path / "m"
    result = run_wm("train", tiny_data, "--out", out, *TINY, "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["epochs"] == 2
    line = re.compile(r"epoch (\d+)/2: τ ([\d.e+-]+), floor met by ([\d.]+)% of validation crops, "
                      r"min PSNR ([\d.]+) dB, bit accuracy ([\d.]+), elapsed ([\d.]+) s")
    lines = result.stderr.splitlines()
    rows = _rows(out / "metrics.csv")
    assert len(lines) == len(rows) == 2, result.stderr
    for text, row in zip(lines, rows):
        match = line.fullmatch(text)
        assert match, text
        epoch, tau, met, min_psnr, accuracy, seconds = match.groups()
        assert epoch == row["epoch"]
        assert float(tau) == pytest.approx(float(row["coefficient_mean"]), rel=1e-2)
        assert float(met) / 100 == pytest.approx(float(row["val_fraction_satisfied"]), abs=1e-3)
        assert float(min_psnr) == pytest.approx(float(row["val_min_psnr"]), abs=0.01)
        assert float(accuracy) == pytest.approx(float(row["val_bit_accuracy"]), abs=1e-4)
        assert float(seconds) == pytest.approx(float(row["seconds"]), abs=0.1)


@pytest.mark.slow
def test_interrupted_run_resumed_ends_with_the_same_weights_as_an_uninterrupted_one(tiny_data, tmp_path):
    """Per-sample closed-loop tau and the Lagrangian's multipliers and nuPI state are the state
    most easily lost; both must come back exactly, with every random generator."""
    from watermark_cli.training import TrainingInterrupted, config_for_preset, load_checkpoint, train

    for method, options in [("sequential", {"tau_scope": "per-sample", "tau_schedule": "closed-loop"}),
                             ("lagrangian", {"dual_optimizer": "nupi"})]:
        config = config_for_preset("quick", method=method, n_bits=128, epochs=3, steps_per_epoch=2, batch_size=4,
                                   train_samples=6, validation_crops=4, validation_crop=64, tau_period=1,
                                   psnr_min=46.0, attacks=("identity", "noise", "blur"), **options)
        straight, interrupted = tmp_path / f"{method}-straight", tmp_path / f"{method}-interrupted"
        train(config, [tiny_data], straight)

        def stop_after_first_epoch(metrics):
            if metrics.epoch == 1:
                raise TrainingInterrupted

        with pytest.raises(TrainingInterrupted):
            train(config, [tiny_data], interrupted, stop_after_first_epoch)
        assert _rows(interrupted / "metrics.csv")[-1]["epoch"] == "1"
        assert not (interrupted / "weights.safetensors").exists()
        train(config, [tiny_data], interrupted, resume=True)

        a, b = load_checkpoint(straight), load_checkpoint(interrupted)
        assert a["epoch"] == b["epoch"] == 3
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), (method, key)
        assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
        from safetensors.torch import load_file

        final_a, final_b = load_file(straight / "weights.safetensors"), load_file(interrupted / "weights.safetensors")
        assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
        columns = [c for c in METRIC_COLUMNS if c != "seconds"]
        assert [[r[c] for c in columns] for r in _rows(straight / "metrics.csv")] == \
               [[r[c] for c in columns] for r in _rows(interrupted / "metrics.csv")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_cuda_without_a_gpu_is_a_one_line_error(tiny_data, tmp_path):
    result = run_wm_here("train", tiny_data, "--out", tmp_path / "m", "--device", "cuda")
    assert result.code == 2 and "no CUDA device" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_frames_in_reader_views_and_a_warm_start(tiny_data, tmp_path):
    """frame_views=reader trains on every frame in each view the floor holds in (a 16-bit PNG:
    its data range, so a crop spans [0, 1]); init_from starts from another run's weights and
    refuses a different architecture."""
    from watermark_cli.io.discovery import collect_image_files
    from watermark_cli.training.data import FramePool

    files = collect_image_files([tiny_data])[:2]
    reader = FramePool.load(files, frame_views="reader")
    nominal = FramePool.load(files, frame_views="nominal")
    for shown, stored in zip(reader.frames, nominal.frames):
        assert shown.min() == 0.0 and shown.max() == 1.0  # the data range view
        assert stored.max() - stored.min() < 1.0
        assert np.corrcoef(shown.ravel(), stored.ravel())[0, 1] > 0.999  # the same picture

    first = tmp_path / "first"
    assert run_wm("train", tiny_data, "--out", first, *TINY, "--set", "frame_views=reader").code == 0
    warm = tmp_path / "warm"
    result = run_wm("train", tiny_data, "--out", warm, *TINY, "--set", f"init_from={first}", "--set",
                    "learning_rate=1e-12", "--epochs", "1", "--json")
    assert result.code == 0, result.stderr
    started, ended = (load_file(str(path / "weights.safetensors")) for path in (first, warm))
    assert all(torch.allclose(started[name].float(), ended[name].float(), atol=2e-3) for name in started)
    refused = run_wm("train", tiny_data, "--out", tmp_path / "other", *TINY, "--bits", "256", "--set",
                     f"init_from={first}")
    assert refused.code == 2 and "architecture" in refused.stderr and "Traceback" not in refused.stderr
