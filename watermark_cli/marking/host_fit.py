"""Informed embedding: the encoder's mark fitted to its host by the key holder's own reader.

The encoder writes a mark that reads back on a typical image. On a small frame the host's own
response in the decoder is as large as the mark's (one 64-px tile holds 4,096 pixels for 256 raw
bits), and a mark that is right on average reads back from too few of them: random held-out crops
read back 15 of 48 at 64² and 42 of 48 at 128². But the embedder knows the host, the key and the
reader, so it can do better than average (informed embedding, Cox, Miller and McKellips 1999):
it moves the mark, a few gradient steps, so that the reader's logits for this very image take the
message's signs with a margin. Every step goes through the quality guard, so each candidate meets
the floor in every view on its quantised values; the best candidate by the same loss is kept,
and the encoder's own mark is the first, so fitting never does worse by that measure.

Only the part of the mark that carries the bits is moved, and it keeps its energy: the rest (a
keyed model's constant, by which the reader locates a crop, and its synchronisation pilot, which
the resize and turn searches find) stays as the encoder wrote it and keeps its share of the
budget. Moving the whole mark took the reads of 128² training crops after a 2° turn from 26 of 36
to between 3 and 17; this way no figure of `benchmarks/small_frames.py`'s attacks fell on 96² and
128² training crops (36 each). On frames too small for those searches (under 96 px a side for the
default model) the caller fits the whole mark instead (`marking.image.fits_whole_mark`). The part
moves only where the encoder put a mark (`movable`): a keyed mark stays on the pixels whose host
owns its signs, so a copy onto another image is refused as before. The reader, the payload and the
false-positive bound do not change.

This module knows neither the model nor the guard: the caller passes its reader and its guard,
so it serves any differentiable reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np

Guarded = TypeVar("Guarded")


@dataclass(frozen=True)
class FitSettings:
    """Gradient steps; the first step's length relative to the fitted part's size (it falls
    linearly to 0); the margin of the logits (the loss is softplus(margin − sign·logit), averaged
    over bits). Chosen on textured crops of the training split's files (96²): the figures hardly
    change from 30 to 60 steps, steps of 0.3 or 0.5, margins of 4 or 8."""

    steps: int = 30
    step: float = 0.3
    margin: float = 4.0


def fit_to_host(
    kept: np.ndarray,
    message: np.ndarray,
    movable: np.ndarray,
    raw_bits: np.ndarray,
    guard: Callable[[np.ndarray], tuple[np.ndarray, Guarded]],
    read_logits: Callable[["torch.Tensor"], "torch.Tensor"],
    settings: FitSettings = FitSettings(),
) -> Guarded:
    """The guarded outcome of the mark `kept` + the `message` part, that part fitted to its host.

    (frames, rows, cols), stored units: `kept`, the part of the encoder's mark left as it is (what
    the reader synchronises on); `message`, the part that carries the bits, moved only where
    `movable` and kept at its own energy (so the kept part keeps its share of the budget);
    `raw_bits`: the 0/1 bits the reader must return; `guard(residual)` → (the marked values, and
    the caller's guarded outcome) at the floor; `read_logits(values)`: the reader's logits (bits,)
    of marked values (a float64 tensor of the frames' shape, differentiable)."""
    import torch

    signs = torch.from_numpy(np.asarray(raw_bits, dtype=np.float64) * 2.0 - 1.0)
    movable = np.asarray(movable, dtype=bool)
    kept = np.asarray(kept, dtype=np.float64)
    fitted = np.asarray(message, dtype=np.float64)
    energy = float(np.sqrt(np.square(fitted).sum()))
    best_loss, best = np.inf, None
    for step in range(settings.steps + 1):
        values, outcome = guard(kept + fitted)
        # Gradients even where the caller reads without them (`torch.inference_mode`).
        with torch.inference_mode(False), torch.enable_grad():
            marked = torch.from_numpy(np.asarray(values, dtype=np.float64)).requires_grad_(True)
            loss = torch.nn.functional.softplus(settings.margin - signs * read_logits(marked).double()).mean()
            (by_value,) = torch.autograd.grad(loss, marked)  # the input's only: no weight gradients
        if best is None or float(loss.detach()) < best_loss:  # the encoder's mark first, whatever its loss
            best_loss, best = float(loss.detach()), outcome
        if step == settings.steps:
            break
        gradient = np.where(movable, by_value.numpy(), 0.0)
        gradient_norm = float(np.sqrt(np.square(gradient).sum()))
        if not np.isfinite(gradient_norm) or gradient_norm == 0.0 or energy == 0.0:
            break  # nothing the mark may move would change the reading
        # A step of a fixed fraction of the part's size, falling to 0, then back to its energy:
        # the guard scales the whole mark to the floor, so only directions matter.
        fitted = fitted - settings.step * (1.0 - step / settings.steps) * energy * gradient / gradient_norm
        fitted *= energy / max(float(np.sqrt(np.square(fitted).sum())), 1e-30)
    return best
