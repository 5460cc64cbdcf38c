"""Constraint methods compared on the same tasks, at CPU scale, over several seeds.

    .venv/bin/python benchmarks/constraint_methods.py [--task all|watermark|digits] [--seeds 3]
                                                      [--threads 1] [--json results.json]

Every method of `wm train --method` (and the sequential penalty's variants) trains the same
networks on the same samples in the same order, and is measured the same way:

- watermark: a 64-bit carrier-tile model trained for 200 steps (batch 16, 64² crops, 512 fixed
  training crops of the training split of pydicom-data's clinical DICOMs) under PSNR_i ≥ 40 dB
  (trained 0.5 dB above, the `wm train` default). Measured on every 256² tile of the held-out
  clinical images (CT, MR, CR, NM, US; watermark_cli/data/clinical.py) and on all 512 training
  crops: the model's own output rounded to 16 bits, no guard, no attack; bit accuracy with no
  attack. The model kept is the one `wm train` selects on its validation split.
- digits: the paper's toy. A classifier (64 → 32 → code of 8 → 10 classes) whose code must let a
  decoder (8 → 32 → 64) rebuild every input with per-sample MSE ≤ θ = 0.02, on scikit-learn's
  bundled 8×8 digits (pixels / 16), 1437 training and 360 held-out images, 60 epochs of batch 64.

Columns: fraction of training and held-out samples meeting the constraint, the worst held-out
violation (dB below the floor / MSE above θ), the main-task metric (bit accuracy / accuracy),
and training wall time; each the mean ± standard deviation over the seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from watermark_cli.constrained.methods import MethodSettings, build_method
from watermark_cli.model.inputs import normalised_frames
from watermark_cli.training.data import SampleOrder
from watermark_cli.constrained.sequential_penalty import PerSampleConstraint

# (label, options): the same options go to `wm train` (watermark) and to the toy's settings.
VARIANTS: list[tuple[str, dict]] = [
    ("sequential (global τ, open loop, hinge)", {"method": "sequential"}),
    ("sequential, per-sample τ_i", {"method": "sequential", "tau_scope": "per-sample"}),
    ("sequential, closed loop", {"method": "sequential", "tau_schedule": "closed-loop"}),
    ("sequential, squared hinge", {"method": "sequential", "penalty_shape": "squared_hinge"}),
    ("fixed λ = 0.1", {"method": "fixed", "fixed_weight": 0.1}),
    ("fixed λ = 1", {"method": "fixed", "fixed_weight": 1.0}),
    ("fixed λ = 10", {"method": "fixed", "fixed_weight": 10.0}),
    ("Lagrangian, SGD dual", {"method": "lagrangian"}),
    ("Lagrangian, nuPI dual", {"method": "lagrangian", "dual_optimizer": "nupi"}),
    ("augmented Lagrangian", {"method": "augmented-lagrangian"}),
    ("projection", {"method": "projection"}),
]

# ---- the watermark task ---------------------------------------------------------------------------

WATERMARK_CONFIG = dict(
    n_bits=256, crop=64, batch_size=16, epochs=8, steps_per_epoch=25, train_samples=512,
    validation_crops=32, validation_crop=128, psnr_min=40.0,
    # tau ×1.5 every epoch: 0.1 → 2.6 over the run; the Lagrangian dual step in dB of violation.
    tau_initial=0.1, tau_growth=1.5, tau_period=25, dual_lr=0.2, penalty_rho=0.5,
)


def held_out_tiles(size: int = 256) -> np.ndarray:
    """Every whole size² tile of every frame of the held-out clinical images, on [0, 1]."""
    from watermark_cli.data.clinical import clinical_files
    from watermark_cli.io.image import read_image

    tiles = []
    for _, path in clinical_files("held_out"):
        for frame in normalised_frames(read_image(path)):
            for top in range(0, frame.shape[0] - size + 1, size):
                for left in range(0, frame.shape[1] - size + 1, size):
                    tiles.append(frame[top : top + size, left : left + size])
    return np.stack(tiles)[:, None].astype(np.float32)


NOISE_SIGMA = 0.02  # of the peak: the attack under which the main metric is read


def measure_watermark(training_pass, images: torch.Tensor, n_bits: int, floor: float, seed: int) -> dict:
    """Per image: PSNR of the 16-bit marked image; bits read back clean and after Gaussian noise."""
    from watermark_cli.training import crop_psnr, marked_for_evaluation

    generator = torch.Generator().manual_seed(seed)
    psnr, correct, correct_noisy = [], 0.0, 0.0
    with torch.no_grad():
        for batch in torch.split(images, 16):
            bits = torch.randint(0, 2, (len(batch), n_bits), generator=generator).float()
            marked = marked_for_evaluation(training_pass, batch, bits)
            psnr.append(crop_psnr(batch, marked))
            noisy = marked + NOISE_SIGMA * torch.randn(marked.shape, generator=generator)
            correct += float(((training_pass.model.decoder(marked) > 0).float() == bits).float().sum())
            correct_noisy += float(((training_pass.model.decoder(noisy) > 0).float() == bits).float().sum())
    psnr = torch.cat(psnr)
    total = len(images) * n_bits
    return {"fraction": float((psnr >= floor).float().mean()), "worst_violation": float((floor - psnr).max().clamp(min=0)),
            "mean_psnr": float(psnr.mean()), "accuracy": correct / total, "noisy_accuracy": correct_noisy / total}


def run_watermark(options: dict, seed: int, train_dir: Path, tiles: torch.Tensor, out: Path) -> dict:
    from watermark_cli.training.data import TrainingSamples
    from watermark_cli.model.store import load_model
    from watermark_cli.model.networks import TrainingPass
    from watermark_cli.training import config_for_preset, load_training_data, train

    config = config_for_preset("quick", **{**WATERMARK_CONFIG, **options, "seed": seed, "device": "cpu"})
    started = time.perf_counter()
    train(config, [train_dir], out)
    seconds = time.perf_counter() - started
    model = load_model(str(out)).model  # the epoch `wm train` selected
    bound = config.psnr_min + config.psnr_margin
    training_pass = TrainingPass(model, projection_psnr=bound if config.method == "projection" else None).eval()
    # The training set as the method saw it: the same fixed crops.
    train_pool, _, _ = load_training_data(config, [train_dir])
    samples = TrainingSamples(train_pool, config.train_samples, config.crop, config.seed,
                              (config.rescale_min, config.rescale_max))
    train_images = torch.from_numpy(samples.crops(range(len(samples))))
    on_train = measure_watermark(training_pass, train_images, config.n_bits, config.psnr_min, seed=1)
    held_out = measure_watermark(training_pass, tiles, config.n_bits, config.psnr_min, seed=2)
    return {"train_fraction": on_train["fraction"], "held_out_fraction": held_out["fraction"],
            "worst_violation": held_out["worst_violation"], "mean_psnr": held_out["mean_psnr"],
            "clean_accuracy": held_out["accuracy"], "metric": held_out["noisy_accuracy"], "seconds": seconds}


# ---- the digits toy ------------------------------------------------------------------------------

DIGITS = dict(code=8, hidden=32, theta=0.04, epochs=60, batch=64, learning_rate=2e-3,
              # MSE violations are ~0.01: coefficients live on a larger scale than in dB.
              tau_initial=1.0, tau_growth=1.15, tau_max=1e5, dual_lr=200.0, penalty_rho=200.0)
DIGITS_FIXED_SCALE = 100.0  # the fixed grid λ ∈ {0.1, 1, 10} × 100 on this task


class DigitsModel(torch.nn.Module):
    def __init__(self, code: int, hidden: int) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, code))
        self.classifier = torch.nn.Linear(code, 10)
        self.decoder = torch.nn.Sequential(torch.nn.Linear(code, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 64),
                                           torch.nn.Sigmoid())

    def forward(self, x):
        code = self.encoder(x)
        return self.classifier(code), self.decoder(code)


def digits_split(seed: int = 0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    held_out = order[: len(x) // 5]
    training = order[len(x) // 5 :]
    return x[training], y[training], x[held_out], y[held_out]


def run_digits(options: dict, seed: int, data) -> dict | None:
    if options["method"] == "projection":
        return None  # rescaling a reconstruction onto the bound needs the input: not a model
    x_train, y_train, x_test, y_test = data
    settings = dict(options)
    if "penalty_shape" in settings:  # the flat option's name for MethodSettings.shape
        settings["shape"] = settings.pop("penalty_shape")
    if settings["method"] == "fixed":
        settings["fixed_weight"] = settings["fixed_weight"] * DIGITS_FIXED_SCALE
    steps_per_epoch = math.ceil(len(x_train) / DIGITS["batch"])
    method = build_method(
        MethodSettings(**{"tau_initial": DIGITS["tau_initial"], "tau_growth": DIGITS["tau_growth"],
                          "tau_max": DIGITS["tau_max"], "tau_period": steps_per_epoch, "dual_lr": DIGITS["dual_lr"],
                          "penalty_rho": DIGITS["penalty_rho"], **settings}),
        PerSampleConstraint("reconstruction_mse", DIGITS["theta"], "le"), len(x_train), DIGITS["batch"])
    torch.manual_seed(seed)
    model = DigitsModel(DIGITS["code"], DIGITS["hidden"])
    optimiser = torch.optim.Adam(model.parameters(), lr=DIGITS["learning_rate"])
    order = SampleOrder(len(x_train), seed)
    started = time.perf_counter()
    for _ in range(DIGITS["epochs"] * steps_per_epoch):
        indices = order.next(DIGITS["batch"])
        logits, rebuilt = model(x_train[indices])
        loss = torch.nn.functional.cross_entropy(logits, y_train[indices])
        mse = (rebuilt - x_train[indices]).square().mean(dim=1)
        objective, _ = method.objective(loss, mse, indices, mse.detach(), indices)
        optimiser.zero_grad(set_to_none=True)
        objective.backward()
        optimiser.step()
        method.after_step(mse.detach(), indices)
    seconds = time.perf_counter() - started
    with torch.no_grad():
        def measure(x, y):
            logits, rebuilt = model(x)
            mse = (rebuilt - x).square().mean(dim=1)
            return float((mse <= DIGITS["theta"]).float().mean()), float((mse - DIGITS["theta"]).max().clamp(min=0)), \
                float((logits.argmax(1) == y).float().mean())
        train_fraction, _, _ = measure(x_train, y_train)
        held_out_fraction, worst, accuracy = measure(x_test, y_test)
    return {"train_fraction": train_fraction, "held_out_fraction": held_out_fraction, "worst_violation": worst,
            "metric": accuracy, "seconds": seconds}


# ---- tables ----------------------------------------------------------------------------------------

def _cell(values: list[float], percent: bool = False, digits: int = 2) -> str:
    scale = 100.0 if percent else 1.0
    mean = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def table(title: str, results: dict[str, list[dict]], metric: str, violation: str,
          extras: tuple[tuple[str, str, bool], ...] = ()) -> str:
    """A Markdown table: one row per variant, mean ± std over seeds. `extras`: (column title,
    key in each run's figures, shown as a percentage)."""
    header = ["method", "train meeting (%)", "held-out meeting (%)", f"worst held-out violation ({violation})", metric,
              *(title for title, _, _ in extras), "train time (s)"]
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, runs in results.items():
        if not runs:
            lines.append(f"| {label} |" + " n/a |" * (len(header) - 1))
            continue
        row = [label, _cell([r["train_fraction"] for r in runs], True, 1),
               _cell([r["held_out_fraction"] for r in runs], True, 1),
               _cell([r["worst_violation"] for r in runs], digits=3 if violation == "MSE" else 2),
               _cell([r["metric"] for r in runs], True, 2),
               *(_cell([r[key] for r in runs], percent, 2) for _, key, percent in extras),
               _cell([r["seconds"] for r in runs], digits=1)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("all", "watermark", "digits"), default="all")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy 2-core box)")
    parser.add_argument("--only", default=None, help="comma-separated substrings of variant labels to run")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's figures here")
    parser.add_argument("--watermark-option", action="append", default=[], metavar="KEY=VALUE",
                        help="change a training option of the watermark task for every variant (sensitivity runs)")
    args = parser.parse_args()
    from watermark_cli.training import parse_assignments

    WATERMARK_CONFIG.update(parse_assignments(args.watermark_option))
    torch.set_num_threads(args.threads)
    variants = [(label, options) for label, options in VARIANTS
                if not args.only or any(part in label for part in args.only.split(","))]
    seeds = list(range(args.seeds))
    everything: dict = {"seeds": seeds}
    started = time.perf_counter()

    if args.task in ("all", "digits"):
        data = digits_split()
        digits_results = {}
        for label, options in variants:
            runs = [run_digits(options, seed, data) for seed in seeds]
            if options["method"] == "fixed":  # the weight this task actually used
                label = f"fixed λ = {options['fixed_weight'] * DIGITS_FIXED_SCALE:g}"
            digits_results[label] = [r for r in runs if r is not None]
            print(f"digits: {label} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        everything["digits"] = digits_results
        print(table(f"Digits toy: per-sample reconstruction MSE ≤ {DIGITS['theta']} ({len(seeds)} seeds)",
                    digits_results, "held-out accuracy (%)", "MSE"))
        print()

    if args.task in ("all", "watermark"):
        from watermark_cli.data.clinical import write_clinical_split

        with tempfile.TemporaryDirectory(prefix="wm-constraint-bench-") as folder:
            work = Path(folder)
            train_dir = work / "train"
            write_clinical_split(train_dir, "train")
            tiles = torch.from_numpy(held_out_tiles())
            watermark_results = {}
            for number, (label, options) in enumerate(variants):
                watermark_results[label] = [run_watermark(options, seed, train_dir, tiles, work / f"run{number}-{seed}")
                                            for seed in seeds]
                print(f"watermark: {label} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        everything["watermark"] = watermark_results
        print(table(f"Watermark task: PSNR_i ≥ 40 dB, {len(tiles)} held-out 256² tiles, 512 training crops "
                    f"({len(seeds)} seeds)", watermark_results, f"held-out bit accuracy, noise σ = {NOISE_SIGMA:g} (%)", "dB",
                    extras=(("held-out bit accuracy, clean (%)", "clean_accuracy", True),
                            ("held-out mean PSNR (dB)", "mean_psnr", False))))
        print()
    print(f"total {time.perf_counter() - started:.0f} s; command: .venv/bin/python benchmarks/constraint_methods.py "
          + " ".join(sys.argv[1:]))
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
