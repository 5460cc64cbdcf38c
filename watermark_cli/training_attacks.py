"""Attacks: what happens to an image after it leaves `wm`, as training layers.

During training one attack is drawn per batch and applied to the watermarked images before the
decoder sees them, so the decoder learns to read through it. Images are float tensors in [0, 1]
(stored values divided by the nominal peak). Non-differentiable steps (rounding) pass the
gradient straight through: y + (f(y) - y).detach().
"""

from __future__ import annotations

import math
import random
from typing import Callable

import torch
import torch.nn.functional as F

TrainingAttack = Callable[[torch.Tensor, random.Random], torch.Tensor]


def straight_through(images: torch.Tensor, attacked: torch.Tensor) -> torch.Tensor:
    return images + (attacked - images).detach()


def identity(images: torch.Tensor, rng: random.Random) -> torch.Tensor:
    return images


def gaussian_noise(images: torch.Tensor, rng: random.Random, max_sigma: float = 0.02) -> torch.Tensor:
    """Additive noise with sigma drawn up to `max_sigma` of the peak."""
    sigma = rng.uniform(0.0, max_sigma)
    return images + sigma * torch.randn_like(images)


def quantise_8bit(images: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Rounding to 256 levels, as an 8-bit export of the full range does."""
    return straight_through(images, torch.round(images.clamp(0, 1) * 255.0) / 255.0)


def gaussian_blur(images: torch.Tensor, rng: random.Random, max_sigma: float = 1.0) -> torch.Tensor:
    sigma = rng.uniform(0.3, max_sigma)
    radius = max(1, math.ceil(2 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1))


def brightness_contrast(images: torch.Tensor, rng: random.Random) -> torch.Tensor:
    gain = rng.uniform(0.7, 1.3)
    offset = rng.uniform(-0.1, 0.1)
    return images * gain + offset


TRAINING_ATTACKS: dict[str, TrainingAttack] = {
    "identity": identity,
    "noise": gaussian_noise,
    "quantise8": quantise_8bit,
    "blur": gaussian_blur,
    "brightness_contrast": brightness_contrast,
}


def pick_training_attack(names: tuple[str, ...], rng: random.Random) -> tuple[str, TrainingAttack]:
    name = rng.choice(names)
    return name, TRAINING_ATTACKS[name]
