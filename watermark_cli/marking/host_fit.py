"""Informed embedding: the encoder's mark fitted to its host by the key holder's own reader.

The encoder writes a mark that reads back on a typical image. On a small frame the host's own
response in the decoder is as large as the mark's (one 64-px tile holds 4,096 pixels for 256 raw
bits), and a mark that is right on average reads back on too few of them: random held-out crops
read back 15 of 48 at 64² and 42 of 48 at 128². But the embedder knows the host, the key and the
reader, so it can do better than average (informed embedding, as in Cox, Miller and McKellips
1999): it moves the mark, a few gradient steps, so that the reader's logits for this very image
take the message's signs with a margin, and every step goes through the quality guard, so each
candidate meets the floor in every view on its quantised values. The best candidate is kept by
the same loss; the encoder's own mark is the first, so fitting never does worse by that measure.

What fitting changes is only where the mark's energy goes inside the pixels the encoder marked
(`movable`): a keyed mark stays on the pixels whose host owns its signs, so a copy onto another
image is refused as before. The reader, the payload and the false-positive bound do not change.
Each step is a forward and a backward pass of the decoder, so fitting is kept for the small
instances that need it (`marking.image`).

This module knows neither the model nor the guard: the caller passes its reader and its guard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np

Guarded = TypeVar("Guarded")


@dataclass(frozen=True)
class FitSettings:
    """Gradient steps, the first step's length relative to the mark's (it falls linearly to 0),
    and the margin of the logits (in the loss softplus(margin − sign·logit), averaged over bits).
    Chosen on crops of the training split's files (64², 96², 128²)."""

    steps: int = 30
    step: float = 0.3
    margin: float = 4.0


def fit_to_host(
    residual: np.ndarray,
    movable: np.ndarray,
    raw_bits: np.ndarray,
    guard: Callable[[np.ndarray], tuple[np.ndarray, Guarded]],
    read_logits: Callable[["torch.Tensor"], "torch.Tensor"],
    settings: FitSettings = FitSettings(),
) -> Guarded:
    """The guarded outcome of the mark fitted to its host.

    `residual` (frames, rows, cols): the encoder's mark in stored units; `movable`: where the mark
    may be (the gradient is zero elsewhere); `raw_bits`: the 0/1 bits the reader must return;
    `guard(residual)` → (the marked values, float64, and the caller's guarded outcome) at the
    floor; `read_logits(values)`: the reader's logits (bits,) of marked values (a float64 tensor of
    the frames' shape, differentiable)."""
    import torch

    signs = torch.from_numpy(np.asarray(raw_bits, dtype=np.float64) * 2.0 - 1.0)
    movable = np.asarray(movable, dtype=bool)
    residual = np.asarray(residual, dtype=np.float64)
    best_loss, best = np.inf, None
    for step in range(settings.steps + 1):
        values, outcome = guard(residual)
        # Gradients even where the caller reads without them (`torch.inference_mode`).
        with torch.inference_mode(False), torch.enable_grad():
            marked = torch.from_numpy(np.asarray(values, dtype=np.float64)).requires_grad_(True)
            logits = read_logits(marked).double()
            loss = torch.nn.functional.softplus(settings.margin - signs * logits).mean()
            (by_value,) = torch.autograd.grad(loss, marked)  # the input's only: no weight gradients
        if float(loss.detach()) < best_loss:
            best_loss, best = float(loss.detach()), outcome
        if step == settings.steps:
            break
        gradient = np.where(movable, by_value.numpy(), 0.0)
        gradient_norm = float(np.sqrt(np.square(gradient).sum()))
        if not np.isfinite(gradient_norm) or gradient_norm == 0.0:
            break  # nothing the mark may move would change the reading
        # A step of a fixed fraction of the mark's own size, falling to 0: the guard rescales the
        # mark to the floor anyway, so only the direction of the gradient matters.
        length = settings.step * (1.0 - step / settings.steps) * float(np.sqrt(np.square(residual).sum()))
        residual = residual - length * gradient / gradient_norm
    return best
