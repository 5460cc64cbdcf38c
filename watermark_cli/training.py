"""`wm train`: learn an encoder/decoder pair under one PSNR constraint per image.

The problem (design §2): minimise the message loss (binary cross-entropy on the raw bits, after
an attack) subject to PSNR_i >= floor for every image i in the batch. Image quality is controlled
only by the sequential penalty on those constraints; there is no image-MSE term. The loop reads
top to bottom: sample crops and messages, embed, attack, decode, add the penalty, step, and every
epoch validate on held-out files, log one CSV row and keep the best model.
"""

from __future__ import annotations

import csv
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .datasets import FramePool, collect_image_files, split_by_file
from .errors import BadInputError

if TYPE_CHECKING:  # torch is imported inside the functions, so that `wm --help` stays instant
    import torch

# Training aims a little above the user's floor so that held-out images clear it without the
# guard having to act; the guard still enforces the floor itself on every written file.
DEFAULT_MARGIN_DB = 0.5


@dataclass
class TrainConfig:
    preset: str = "quick"
    method: str = "sequential"
    n_bits: int = 256
    psnr_min: float = 40.0
    psnr_margin: float = DEFAULT_MARGIN_DB
    crop: int = 64
    batch_size: int = 32
    epochs: int = 16
    steps_per_epoch: int = 50
    learning_rate: float = 2e-3
    # Cosine decay to this rate over the run (None: constant). A calm end lets the decoder
    # settle after the last growths of tau.
    learning_rate_final: float | None = None
    # Sequential penalty: tau grows by `tau_growth` every `tau_period` optimiser steps.
    tau_initial: float = 0.1
    tau_growth: float = 1.25
    tau_period: int = 100
    tau_max: float = 500.0
    penalty_shape: str = "hinge"
    attacks: tuple[str, ...] = ("identity", "noise", "quantise8", "blur")
    rescale_min: float = 1.0  # random rescale of training crops (anatomy at many pixel scales)
    rescale_max: float = 1.0
    tile: int = 32
    strength_channels: int = 16
    decoder_channels: int = 16
    decoder_maps: int = 2
    carrier_smoothing: float = 0.0
    held_out_fraction: float = 0.1
    validation_crops: int = 64
    validation_crop: int = 128
    seed: int = 0
    device: str = "auto"
    parity_bytes: int | None = None

    def network_config(self):
        from .networks import NetworkConfig

        return NetworkConfig(
            n_bits=self.n_bits,
            tile=self.tile,
            strength_channels=self.strength_channels,
            decoder_channels=self.decoder_channels,
            decoder_maps=self.decoder_maps,
            carrier_smoothing=self.carrier_smoothing,
        )


PRESETS: dict[str, dict] = {
    # Minutes on two CPU cores: enough for demos, tests and a usable model.
    "quick": {},
    # The shipped model: longer, wider attacks.
    "standard": {
        "epochs": 40,
        "steps_per_epoch": 100,
        "tau_period": 150,
        "learning_rate_final": 2e-4,
        "rescale_min": 0.5,
        "rescale_max": 1.5,
        "carrier_smoothing": 1.0,
        # Listed twice = drawn twice as often: JPEG exports are the hardest attack to learn.
        "attacks": ("identity", "noise", "quantise8", "blur", "brightness_contrast", "window8", "jpeg", "jpeg",
                    "resize"),
    },
    # The paper's configuration (arXiv 2601.16812), for comparison.
    "paper": {
        "n_bits": 200,
        "crop": 224,
        "batch_size": 32,
        "epochs": 200,
        "steps_per_epoch": 100,
        "learning_rate": 1e-4,
        "tau_initial": 0.1,
        "tau_growth": 1.1,
        "tau_max": 500.0,
        "attacks": ("identity",),
        "psnr_margin": 0.0,
    },
}


def config_for_preset(preset: str, **overrides) -> TrainConfig:
    if preset not in PRESETS:
        raise BadInputError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    values = dict(PRESETS[preset])
    if preset == "paper":
        # The paper grows tau every 10 epochs.
        values["tau_period"] = 10 * values["steps_per_epoch"]
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise BadInputError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    return TrainConfig(preset=preset, **values)


def validate_config(config: TrainConfig) -> None:
    if config.method != "sequential":
        raise BadInputError(f"unknown training method {config.method!r} (available: sequential)")
    if config.n_bits < 8 or config.n_bits % 8:
        raise BadInputError("--bits must be a positive multiple of 8")
    if config.crop < config.tile or config.crop % config.tile:
        raise BadInputError(f"crop size must be a multiple of the {config.tile}-px tile")
    if config.epochs < 1 or config.steps_per_epoch < 1 or config.batch_size < 1:
        raise BadInputError("epochs, steps per epoch and batch size must be positive")
    from .training_attacks import TRAINING_ATTACKS

    unknown = [a for a in config.attacks if a not in TRAINING_ATTACKS]
    if unknown:
        raise BadInputError(f"unknown training attack(s): {', '.join(unknown)}")


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise BadInputError("--device cuda was asked for but no CUDA device is available")
    if requested not in ("cpu", "cuda"):
        raise BadInputError(f"unknown device {requested!r} (auto, cpu or cuda)")
    return requested


def crop_psnr(clean: "torch.Tensor", marked: "torch.Tensor") -> "torch.Tensor":
    """PSNR per image in dB with peak 1 (images are on the nominal range)."""
    import torch

    mse = (marked - clean).square().mean(dim=(1, 2, 3)).clamp_min(1e-12)
    return -10.0 * torch.log10(mse)


@dataclass
class EpochMetrics:
    epoch: int
    step: int
    seconds: float
    tau: float
    train_loss: float
    train_bit_accuracy: float
    train_fraction_satisfied: float
    train_min_psnr: float
    val_bit_accuracy: float
    val_fraction_satisfied: float
    val_min_psnr: float
    val_mean_psnr: float


@dataclass
class TrainResult:
    output: Path
    best: EpochMetrics
    history: list[EpochMetrics]
    seconds: float
    train_files: list[Path] = field(default_factory=list)
    validation_files: list[Path] = field(default_factory=list)


def train(
    config: TrainConfig,
    data: list[Path],
    output: Path,
    progress: Callable[[EpochMetrics], None] | None = None,
) -> TrainResult:
    import torch
    import torch.nn.functional as F

    from .training_attacks import pick_training_attack
    from .model_store import save_model
    from .networks import WatermarkModel
    from .payload import PayloadCodec, default_parity_bytes
    from .sequential_penalty import PenaltySchedule, PerSampleConstraint, SequentialPenalty

    validate_config(config)
    device = pick_device(config.device)
    started = time.perf_counter()

    # ---- data: split each source by file, weight sources equally, load frames ----------------
    train_files: list[Path] = []
    train_weights: list[float] = []
    validation_files: list[Path] = []
    for source in data:
        source_files = collect_image_files([source])
        if not source_files:
            raise BadInputError(f"no image files in {source}")
        source_train, source_validation = split_by_file(source_files, config.held_out_fraction, config.seed)
        train_files += source_train
        train_weights += [1.0 / len(source_train)] * len(source_train)
        validation_files += source_validation
    if not train_files:
        raise BadInputError(f"no images found in {', '.join(map(str, data))}")
    train_pool = FramePool.load(train_files, train_weights)
    if not train_pool.frames:
        raise BadInputError(f"no usable training image (≥ 64 px, grayscale) in {', '.join(map(str, data))}")
    validation_pool = FramePool.load(validation_files) if validation_files else train_pool
    if not validation_pool.frames:
        validation_pool = train_pool

    # ---- model, optimiser, penalty ----------------------------------------------------------
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    model = WatermarkModel(config.network_config()).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    penalty = SequentialPenalty(
        PerSampleConstraint("psnr_db", bound=config.psnr_min + config.psnr_margin, sense="ge"),
        PenaltySchedule(config.tau_initial, config.tau_growth, config.tau_period, config.tau_max),
        shape=config.penalty_shape,
    )
    parity = config.parity_bytes if config.parity_bytes is not None else default_parity_bytes(config.n_bits)
    PayloadCodec(config.n_bits, parity_bytes=parity)  # fail early on a layout with no room

    # A fixed validation set: crops of held-out files with fixed messages.
    val_rng = random.Random(config.seed + 1)
    # Frames smaller than the validation crop are reflect-padded by the sampler.
    val_size = max(config.tile, config.validation_crop - config.validation_crop % config.tile)
    val_images = torch.from_numpy(validation_pool.sample_crops(config.validation_crops, val_size, val_rng)).to(device)
    val_bits = torch.from_numpy(np.array(
        [[val_rng.randrange(2) for _ in range(config.n_bits)] for _ in range(config.validation_crops)],
        dtype=np.float32)).to(device)

    history: list[EpochMetrics] = []
    best: tuple[tuple[float, float], EpochMetrics, dict] | None = None
    step = 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        sums = {"loss": 0.0, "accuracy": 0.0, "satisfied": 0.0}
        worst_psnr = math.inf
        for _ in range(config.steps_per_epoch):
            if config.learning_rate_final is not None:
                progress_fraction = step / (config.epochs * config.steps_per_epoch)
                rate = config.learning_rate_final + 0.5 * (config.learning_rate - config.learning_rate_final) * (
                    1.0 + math.cos(math.pi * progress_fraction))
                for group in optimiser.param_groups:
                    group["lr"] = rate
            crops = train_pool.sample_crops(config.batch_size, config.crop, rng, (config.rescale_min, config.rescale_max))
            clean = torch.from_numpy(crops).to(device)
            bits = torch.randint(0, 2, (config.batch_size, config.n_bits), device=device).float()
            residual = model.encoder(clean, bits)
            marked = (clean + residual).clamp(0.0, 1.0)
            psnr_values = crop_psnr(clean, marked)
            _, attack = pick_training_attack(config.attacks, rng)
            logits = model.decoder(attack(marked, rng))
            message_loss = F.binary_cross_entropy_with_logits(logits, bits)
            penalty_term, report = penalty.penalty(psnr_values)
            loss = message_loss + penalty_term
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            penalty.advance()
            step += 1
            sums["loss"] += float(message_loss.detach())
            sums["accuracy"] += float(((logits.detach() > 0).float() == bits).float().mean())
            sums["satisfied"] += report.fraction_satisfied
            worst_psnr = min(worst_psnr, float(psnr_values.detach().min()))

        val_accuracy, val_satisfied, val_min, val_mean = _validate(model, val_images, val_bits, config.psnr_min)
        n = config.steps_per_epoch
        metrics = EpochMetrics(
            epoch=epoch, step=step, seconds=round(time.perf_counter() - started, 2), tau=penalty.tau,
            train_loss=sums["loss"] / n, train_bit_accuracy=sums["accuracy"] / n,
            train_fraction_satisfied=sums["satisfied"] / n, train_min_psnr=worst_psnr,
            val_bit_accuracy=val_accuracy, val_fraction_satisfied=val_satisfied,
            val_min_psnr=val_min, val_mean_psnr=val_mean,
        )
        history.append(metrics)
        # Model selection: first the share of held-out crops meeting the floor, then bit accuracy.
        score = (val_satisfied, val_accuracy)
        if best is None or score >= best[0]:
            best = (score, metrics, {k: v.detach().clone() for k, v in model.state_dict().items()})
        if progress:
            progress(metrics)

    assert best is not None
    model.load_state_dict(best[2])
    seconds = time.perf_counter() - started
    card = _model_card(config, parity, train_pool, validation_pool if validation_files else None, best[1], seconds, device)
    output.mkdir(parents=True, exist_ok=True)
    save_model(output, model, card)
    _write_metrics(output, history)
    _plot_metrics(output, history, config.psnr_min)
    return TrainResult(output, best[1], history, seconds, train_pool.files, validation_pool.files if validation_files else [])


def _validate(model, images, bits, psnr_min: float) -> tuple[float, float, float, float]:
    import torch

    model.eval()
    with torch.no_grad():
        marked = (images + model.encoder(images, bits)).clamp(0.0, 1.0)
        # Measure as a file would be written: 16-bit rounding of the stored values.
        marked = torch.round(marked * 65535.0) / 65535.0
        psnr_values = crop_psnr(images, marked)
        logits = model.decoder(marked)
        accuracy = float(((logits > 0).float() == bits).float().mean())
    return (accuracy, float((psnr_values >= psnr_min).float().mean()),
            float(psnr_values.min()), float(psnr_values.mean()))


def _model_card(config: TrainConfig, parity: int, train_pool: FramePool, validation_pool: FramePool | None,
                best: EpochMetrics, seconds: float, device: str) -> dict:
    from .payload import PayloadCodec

    codec = PayloadCodec(config.n_bits, parity_bytes=parity)
    return {
        "name": f"wm-{config.preset}-{config.n_bits}b",
        "format_version": 1,
        "architecture": {"type": "carrier-tiles", **config.network_config().to_dict()},
        "payload": {
            "raw_bits": config.n_bits,
            "layout": "length byte + message + zero padding + CRC-32, Reed-Solomon over GF(256), keyed XOR",
            "parity_bytes": parity,
            "capacity_bytes": codec.capacity_bytes,
        },
        "quality_floor": {"psnr_min_db": config.psnr_min, "trained_with_margin_db": config.psnr_margin,
                          "peak": "nominal", "domain": "stored"},
        "training": {
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
            "device": device,
            "seconds": round(seconds, 1),
            "files": {
                "train": [str(p) for p in train_pool.files],
                "validation": [str(p) for p in validation_pool.files] if validation_pool else [],
            },
        },
        "figures": {
            "note": "held-out crops, float model output rounded to 16 bits, no attack, no guard",
            "selected_epoch": best.epoch,
            "val_bit_accuracy": round(best.val_bit_accuracy, 6),
            "val_fraction_meeting_floor": round(best.val_fraction_satisfied, 6),
            "val_min_psnr_db": round(best.val_min_psnr, 3),
            "val_mean_psnr_db": round(best.val_mean_psnr, 3),
        },
    }


def _write_metrics(output: Path, history: list[EpochMetrics]) -> None:
    with open(output / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(history[0])))
        writer.writeheader()
        for row in history:
            writer.writerow(asdict(row))


def _plot_metrics(output: Path, history: list[EpochMetrics], psnr_min: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m.epoch for m in history]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [m.train_bit_accuracy for m in history], label="train")
    axes[0].plot(epochs, [m.val_bit_accuracy for m in history], label="validation")
    axes[0].set_title("bit accuracy")
    axes[0].legend()
    axes[1].plot(epochs, [m.val_min_psnr for m in history], label="validation min")
    axes[1].plot(epochs, [m.val_mean_psnr for m in history], label="validation mean")
    axes[1].axhline(psnr_min, color="red", linestyle="--", label="floor")
    axes[1].set_title("PSNR (dB)")
    axes[1].legend()
    axes[2].semilogy(epochs, [m.tau for m in history])
    axes[2].set_title("penalty coefficient τ")
    for axis in axes:
        axis.set_xlabel("epoch")
    figure.tight_layout()
    figure.savefig(output / "metrics.png", dpi=90)
    plt.close(figure)
