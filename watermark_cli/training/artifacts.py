"""What a `wm train` run leaves beside its weights: the model card, `metrics.csv` (one row per
epoch) and `metrics.png` (the same figures, plotted).

`history` below is the run's list of `loop.EpochMetrics`, one per epoch, and `best` the one
model selection kept; this module reads their fields and does not import the loop.
"""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from pathlib import Path

from ..io.writing import csv_text, write_atomically
from ..payload import PayloadCodec
from .config import TrainConfig, config_options
from .data import FramePool

METRICS_FILE = "metrics.csv"
PLOT_FILE = "metrics.png"


def model_card(config: TrainConfig, train_pool: FramePool, validation_pool: FramePool | None, best,
               seconds: float, device, world_size: int) -> dict:
    """The card saved beside the weights: architecture, payload, floor, how the model was trained,
    and the held-out figures of the epoch model selection kept (`best`)."""
    return {
        "name": f"wm-{config.preset}-{config.n_bits}b",
        "format_version": 1,
        "architecture": {"type": "carrier-tiles", **config.network.to_dict()},
        "payload": PayloadCodec(config.n_bits).describe(),
        "quality_floor": {"psnr_min_db": config.psnr_min, "trained_with_margin_db": config.psnr_margin,
                          # The unit training measured PSNR in: every reader view, or the nominal peak.
                          "trained_in": "reader views" if config.frame_views == "reader" else "nominal peak"},
        "training": {
            "method": config.method,
            "config": config_options(config),
            "device": str(device.type),
            "processes": world_size,
            "seconds": round(seconds, 1),
            "files": {
                "train": [str(p) for p in train_pool.files],
                "validation": [str(p) for p in validation_pool.files] if validation_pool else [],
            },
        },
        "figures": {
            "note": "held-out crops, float model output rounded to 16 bits, no attack, no guard"
                    + (" (residual projected onto the floor, as the projection method trains)"
                       if config.method == "projection" else ""),
            "selected_epoch": best.epoch,
            "val_bit_accuracy": round(best.val_bit_accuracy, 6),
            "val_fraction_meeting_floor": round(best.val_fraction_satisfied, 6),
            "val_min_psnr_db": round(best.val_min_psnr, 3),
            "val_mean_psnr_db": round(best.val_mean_psnr, 3),
        },
    }


def write_metrics(output: Path, history: list) -> None:
    """`metrics.csv`: one row per epoch so far, one column per EpochMetrics field."""
    write_atomically(output / METRICS_FILE, csv_text([f.name for f in fields(history[0])], map(asdict, history)))


def plot_metrics(output: Path, history: list, psnr_min: float) -> None:
    """`metrics.png`: bit accuracy, PSNR against the floor, the fraction meeting it, and the
    method's coefficient, per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m.epoch for m in history]
    figure, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    axes[0].plot(epochs, [m.train_bit_accuracy for m in history], label="train")
    axes[0].plot(epochs, [m.val_bit_accuracy for m in history], label="validation")
    axes[0].set_title("bit accuracy")
    axes[0].legend()
    axes[1].plot(epochs, [m.train_min_psnr for m in history], label="train min", linestyle=":")
    axes[1].plot(epochs, [m.val_min_psnr for m in history], label="validation min")
    axes[1].plot(epochs, [m.val_mean_psnr for m in history], label="validation mean")
    axes[1].axhline(psnr_min, color="red", linestyle="--", label="floor")
    axes[1].set_title("PSNR (dB)")
    axes[1].legend()
    axes[2].plot(epochs, [m.train_fraction_satisfied for m in history], label="train")
    axes[2].plot(epochs, [m.val_fraction_satisfied for m in history], label="validation")
    axes[2].set_ylim(-0.02, 1.02)
    axes[2].set_title("fraction meeting the floor")
    axes[2].legend()
    coefficients = [(m.coefficient_mean, m.coefficient_max) for m in history]
    if all(math.isnan(mean) for mean, _ in coefficients):
        axes[3].text(0.5, 0.5, f"no coefficient ({history[0].method})", ha="center", va="center",
                     transform=axes[3].transAxes)
    else:
        axes[3].plot(epochs, [mean for mean, _ in coefficients], label="mean")
        axes[3].plot(epochs, [top for _, top in coefficients], label="max")
        if all(top > 0 for _, top in coefficients):
            axes[3].set_yscale("log")
        axes[3].legend()
    axes[3].set_title(f"{'multiplier λ' if 'lagrangian' in history[0].method else 'coefficient τ'} ({history[0].method})")
    for axis in axes:
        axis.set_xlabel("epoch")
    figure.tight_layout()
    write_atomically(output / PLOT_FILE, lambda handle: figure.savefig(handle, format="png", dpi=90))
    plt.close(figure)
